"""
The ``vumi.deploy`` runner's own logic: the batches, reading a minion's
error out of what it returned, refusing bad arguments before any minion is asked.
tests/integration/test_orchestrate.py runs it for real against a master and minions.
"""

import importlib.util
import pathlib

import pytest

RUNNER = pathlib.Path(__file__).resolve().parents[3] / "salt" / "_runners" / "vumi.py"


@pytest.fixture
def runner():
    spec = importlib.util.spec_from_file_location("vumi_runner_under_test", RUNNER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.__context__ = {}
    mod.__opts__ = {"conf_file": "/nonexistent/master"}  # nothing may be asked of it here
    return mod


@pytest.mark.parametrize(("batch", "sizes"), [(None, [5]), ("", [5]), (1, [1] * 5), ("2", [2, 2, 1]),
                                              ("40%", [2, 2, 1]), ("10%", [1] * 5), ("100%", [5])])  # fmt: skip
def test_batches(runner, batch, sizes):
    hosts = [f"web-{i}" for i in range(5)]
    batches = runner._batches(hosts, batch)
    assert [len(b) for b in batches] == sizes and sum(batches, []) == hosts


@pytest.mark.parametrize("batch", [0, "0", "-1", "two", "%", True])
def test_a_bad_batch_is_refused_naming_it(runner, batch):
    with pytest.raises(ValueError, match=f"invalid batch {batch!r}"):
        runner._batches(["web-1"], batch)


def test_a_minions_error_is_its_message_or_its_failed_states(runner):
    assert runner._error("ERROR: deploy of staging failed at stage 'health': boom", 1) == (
        "deploy of staging failed at stage 'health': boom",
        None,
    )
    assert runner._error({"release": "20261201_000000"}, 0) == (None, None)
    states = {
        "vumi_|-a_|-staging_|-webapp_running": {"result": False, "comment": "port 8001 could not be restarted"},
        "vumi_|-b_|-staging_|-tree": {"result": True, "comment": "in place"},
    }
    assert runner._error(states, 2) == ("port 8001 could not be restarted", None)
    assert runner._error({"x": {"result": True, "comment": ""}}, 0) == (None, None)
    assert runner._error(["Rendering SLS 'base:vumi.webapp' failed"], 1) == (
        "Rendering SLS 'base:vumi.webapp' failed",
        None,
    )


def test_an_error_the_bundle_names_keeps_its_kind(runner):
    held = {"kind": "Held", "message": "staging is held by the fleet deploy of release 20261201_000000", "jid": "1"}
    assert runner._error({"error": held}, 1) == (held["message"], held)


@pytest.mark.parametrize(("versions", "said"), [
    ({"web-1": "0.2.0", "web-2": "0.1.9"}, "web-2 failed at version: these hosts run another version of vumi-salt "
                                           "than 0.2.0: web-2 0.1.9"),
    ({"web-1": "0.1.9", "web-2": "0.1.9"}, "web-1 failed at version: these hosts run another version of vumi-salt "
                                           "than 0.2.0: web-1, web-2 0.1.9"),
])  # fmt: skip
def test_hosts_on_another_version_than_the_runner_are_named(runner, versions, said):
    assert runner.VERSION == "0.2.0"
    with pytest.raises(runner.Failed) as failed:
        runner._one_version({host: {"version": v} for host, v in versions.items()})
    assert str(failed.value).startswith(said), failed.value
    assert runner._one_version({"web-1": {"version": "0.2.0"}, "web-2": {"version": "0.2.0"}}) == "0.2.0"


@pytest.mark.parametrize(("kwargs", "said"), [
    ({}, "name the environment and the hosts"),
    ({"branch": "staging"}, "name the environment and the hosts"),
    ({"branch": "staging", "tgt": "web*", "batch": "two"}, "invalid batch 'two'"),
])  # fmt: skip
def test_bad_arguments_fail_the_run_before_any_minion_is_asked(runner, kwargs, said):
    res = runner.deploy(**kwargs)
    assert res["result"] is False and said in res["comment"], res
    assert runner.__context__["retcode"] == 1


class Minions:
    """A LocalClient stand-in: each host's return for each ``vumi.fleet_step`` step, from ``answer(step, host)``."""

    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def cmd(self, hosts, fun, arg=(), **_):
        step = arg[0] if fun == "vumi.fleet_step" else fun
        self.asked.append((step, tuple(hosts)))
        rets = {host: self.answer(step, host) for host in hosts}
        return {host: ret for host, ret in rets.items() if ret is not None}  # None: no answer


def _deploy(runner, answer):
    minions = Minions(answer)
    fleet = runner.Fleet(minions, ["web-1", "web-2"], 5)
    report = {"branch": "staging", "hosts": fleet.hosts, "revision": "a" * 40, "release": "20261201_000000",
              "result": False}  # fmt: skip
    return runner._run(fleet, report, "staging", "a" * 40, "20261201_000000", [fleet.hosts], 60, {}), minions


def test_an_undoing_that_fails_is_named_with_its_host(runner):
    def answer(step, host):
        if step == "prepare" and host == "web-1":
            return {"ret": {"error": {"kind": "StageFailed", "message": "boom", "stage": "fetch"}}, "retcode": 1}
        if step == "discard" and host == "web-2":
            return None
        return {"ret": {}, "retcode": 0}

    res, _ = _deploy(runner, answer)
    assert res["comment"].startswith("web-1 failed at prepare: boom\nnothing was published"), res["comment"]
    assert "THE UNDOING FAILED TOO" in res["comment"]
    assert "web-2: did not answer vumi.fleet_step within 5s" in res["comment"]
    assert res["failed"]["kind"] == {"kind": "StageFailed", "message": "boom", "stage": "fetch"}
    assert runner.__context__["retcode"] == 1


def test_a_host_that_refused_is_not_asked_to_undo(runner):
    def answer(step, host):
        if step == "prepare" and host == "web-2":
            return {"ret": {"error": {"kind": "Held", "message": "staging is held", "release": "x"}}, "retcode": 1}
        return {"ret": {}, "retcode": 0}

    res, minions = _deploy(runner, answer)
    assert ("discard", ("web-1",)) in minions.asked, minions.asked  # web-2 did nothing of this run
    assert "(web-2 refused the deploy before doing anything)" in res["comment"], res["comment"]
    assert ("unhold", ("web-1", "web-2")) in minions.asked  # only this run's hold is ended (by release)
