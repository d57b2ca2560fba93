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
    """
    A LocalClient stand-in: each host's return for each ``vumi.fleet_step`` step (or
    function), from ``answer(step, host)``; None: the host does not answer.
    """

    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def cmd_iter_no_block(self, hosts, fun, arg=(), **_):
        step = arg[0] if fun == "vumi.fleet_step" else fun
        self.asked.append((step, tuple(hosts)))
        for host in hosts:
            ret = self.answer(step, host)
            yield None if ret is None else {host: ret}


class Run:
    """The run's heartbeat and events, recorded instead of sent."""

    id, hold, beating = "20261201000000000000", 60, False

    def __init__(self):
        self.lost, self.events = set(), []

    def beat(self, phase):
        pass

    def event(self, phase, **data):
        self.events.append(phase)


def _deploy(runner, answer, canary=None, canary_wait=0.1, batch=None):
    minions = Minions(answer)
    fleet = runner.Fleet(minions, ["web-1", "web-2"], 5, Run())
    report = {"branch": "staging", "hosts": fleet.hosts, "revision": "a" * 40, "release": "20261201_000000",
              "result": False}  # fmt: skip
    res = runner._run(fleet, report, "staging", "a" * 40, "20261201_000000", batch, canary, canary_wait, False, {})
    return res, minions


OK = {"ret": {}, "retcode": 0}


def test_an_undoing_that_fails_is_named_with_its_host_and_exits_2(runner):
    def answer(step, host):
        if step == "prepare" and host == "web-1":
            return {"ret": {"error": {"kind": "StageFailed", "message": "boom", "stage": "fetch"}}, "retcode": 1}
        if step == "discard" and host == "web-2":
            return {"ret": "ERROR: the disk is full", "retcode": 1}
        return OK

    res, _ = _deploy(runner, answer)
    assert res["comment"].startswith("web-1 failed at prepare: boom\nnothing was published"), res["comment"]
    assert "THE UNDOING FAILED TOO" in res["comment"]
    assert "web-2: the disk is full" in res["comment"]
    assert res["failed"]["kind"] == {"kind": "StageFailed", "message": "boom", "stage": "fetch"}
    assert res["retcode"] == runner.__context__["retcode"] == 2


def test_a_host_that_does_not_answer_is_named_and_not_asked_again(runner):
    def answer(step, host):
        return None if host == "web-2" and step == "prepare" else OK

    res, minions = _deploy(runner, answer)
    assert res["comment"].splitlines()[0] == "web-2 did not answer within 5 s at prepare; it is unreachable or busy"
    assert res["failures"] == [{"host": "web-2", "error": "did not answer vumi.fleet_step within 5 s", "lost": True}]
    assert ("discard", ("web-1",)) in minions.asked and ("unhold", ("web-1",)) in minions.asked, minions.asked
    assert "THE UNDOING FAILED TOO" not in res["comment"], "nothing was published: its hold lapses by itself"
    assert "web-2 did not answer: its hold lapses by itself" in res["comment"]
    assert res["retcode"] == 1


def test_every_host_that_failed_has_its_line(runner):
    def answer(step, host):
        if step == "prepare":
            said = "The minion function caused an exception: Traceback (most recent call last):\n  x\nOSError: no space"
            return {"ret": said, "retcode": 1}
        if step == "discard":
            return {"ret": "ERROR: stage 'health' failed: the log ends:\nTraceback (most recent call last):\n  y\nE: z"}
        return OK

    res, _ = _deploy(runner, answer)
    lines = res["comment"].splitlines()
    assert lines[:2] == [f"web-{i} failed at prepare: OSError: no space (the minion's log has the traceback)"
                         for i in (1, 2)], lines  # fmt: skip
    assert not any(line == "  x" for line in lines), "never a traceback of the minion's"


def test_a_log_tail_in_an_error_is_kept(runner):
    said = "deploy of staging failed at stage 'health': the log ends:\nTraceback (most recent call last):\n  y\nE: z"
    assert runner._short(said) == said
    failed = runner.Failed("prepare", [("web-1", said, None)])
    assert str(failed) == "web-1 failed at prepare: deploy of staging failed at stage 'health': the log ends: … E: z"


def test_a_host_that_refused_is_not_asked_to_undo(runner):
    def answer(step, host):
        if step == "prepare" and host == "web-2":
            return {"ret": {"error": {"kind": "Held", "message": "staging is held", "release": "x"}}, "retcode": 1}
        return OK

    res, minions = _deploy(runner, answer)
    assert ("discard", ("web-1",)) in minions.asked, minions.asked  # web-2 did nothing of this run
    assert "(web-2 refused the deploy before doing anything)" in res["comment"], res["comment"]
    assert ("unhold", ("web-1", "web-2")) in minions.asked  # only this run's hold is ended (by release)


def serving(release, answers=True, pid=10):
    return {"ret": {"current": release, "held": None, "processes": {},
                    "ports": {8001: {"state": "RUNNING", "release": release, "pid": pid, "answers": answers,
                                     "configured": True}}}, "retcode": 0}  # fmt: skip


def test_a_canary_that_fails_is_put_back_and_the_others_never_switch(runner):
    def answer(step, host):
        if step == "serving":
            return serving("20261201_000000", answers=False)
        return OK

    res, minions = _deploy(runner, answer, canary=1)
    assert res["comment"].splitlines()[0] == "web-1 failed at canary: port 8001 does not answer HTTP below 500"
    published = [hosts for step, hosts in minions.asked if step == "publish"]
    assert published == [("web-1",)], minions.asked
    assert ("revert", ("web-1",)) in minions.asked and ("discard", ("web-2",)) in minions.asked
    assert "restarted back onto it: web-1" in res["comment"] and "never switched: web-2" in res["comment"]
    assert res["retcode"] == 1


def test_a_canary_restarted_meanwhile_fails(runner):
    pids = iter(range(100, 200))

    def answer(step, host):
        return serving("20261201_000000", pid=next(pids)) if step == "serving" else OK

    res, _ = _deploy(runner, answer, canary="50%", canary_wait=2.5)
    assert "web-1 failed at canary: port 8001 was restarted (pid 100, now 101)" in res["comment"], res["comment"]


def test_a_canary_that_holds_lets_the_others_follow(runner):
    def answer(step, host):
        return serving("20261201_000000") if step == "serving" else OK

    res, minions = _deploy(runner, answer, canary=1, canary_wait=0.5)
    assert res["result"] is True, res["comment"]
    steps = [(step, hosts) for step, hosts in minions.asked if step in ("publish", "state.sls", "serving")]
    assert steps[:3] == [("publish", ("web-1",)), ("state.sls", ("web-1",)), ("serving", ("web-1",))], steps
    assert steps[-2:] == [("publish", ("web-2",)), ("state.sls", ("web-2",))], steps
    assert "retcode" not in res


@pytest.mark.parametrize(("canary", "size"), [(None, 0), (1, 1), ("2", 2), ("10%", 1), ("50%", 2)])
def test_canary_sizes(runner, canary, size):
    assert runner._canary(["a", "b", "c", "d"], canary) == ["a", "b", "c", "d"][:size]


@pytest.mark.parametrize("canary", ["x", -1, "y%", True])
def test_a_bad_canary_is_refused_naming_it(runner, canary):
    with pytest.raises(ValueError, match=f"invalid canary {canary!r}"):
        runner._canary(["a"], canary)


def test_the_release_most_hosts_serve_is_recovered_to(runner):
    old, new = "20261201_000000", "20261202_000000"

    def host(current, *running):
        ports = {8000 + i: {"release": r, "configured": True} for i, r in enumerate(running)}
        return {"current": current, "ports": ports, "processes": {}}

    seen = {"a": host(new, old, old), "b": host(new, old), "c": host(new, new), "d": host(old, new, old)}
    assert runner._most_served(seen) == old  # d runs both: it serves neither
    assert runner._most_served({"a": host(new, new), "b": host(new, old)}) == old  # a tie: the older
    assert runner._most_served({"a": host(new, None), "b": host(new)}) == new  # nothing runs: the current
    assert runner._most_served({"a": host(None)}) is None


def test_the_status_table_says_what_serves_in_one_line_per_host(runner):
    rows = [
        {"host": "web-1", "environment": "staging", "release": "20261201_000000", "revision": "a" * 40,
         "behind": False, "ports": [8001, 8002], "answering": [8001, 8002],
         "releases": {8001: "20261201_000000", 8002: "20261201_000000"}, "held": None},
        {"host": "web-2", "environment": "staging", "release": "20261201_000000", "revision": "a" * 40,
         "behind": True, "ports": [8001, 8002], "answering": [8001],
         "releases": {8001: "20261130_000000", 8002: None},
         "held": {"run": "2026", "release": "20261201_000000", "runner": "gone"}},
        {"host": "web-3", "error": "Minion did not return. [No response]\nmore"},
        {"host": "web-4", "environment": "staging", "release": "20261201_000000", "revision": "a" * 40,
         "behind": False, "ports": [8001], "answering": [8001], "releases": {8001: "20261201_000000"},
         "held": None, "maintenance": {"on": True, "since": "2026-12-06T12:00:00+00:00"}},
    ]  # fmt: skip
    lines = runner.status_table(rows).splitlines()
    assert lines[0].split() == ["HOST", "ENV", "CURRENT", "REVISION", "SERVING", "HELD", "BEHIND"]
    assert lines[1].split() == ["web-1", "staging", "20261201_000000", "aaaaaaaaaa", "8001", "8002", "ok", "-", "no"]
    assert "8001 runs 20261130_000000 (not restarted), 8002 down" in lines[2], lines[2]
    assert "run 2026 (20261201_000000, runner gone)" in lines[2] and lines[2].endswith("yes"), lines[2]
    assert lines[3].split()[:3] == ["web-3", "-", "ERROR"] and "more" not in lines[3]
    assert "MAINTENANCE (503 via nginx), 8001 ok" in lines[4]
    assert len(lines) == 5


def test_the_history_table_has_a_line_per_entry_and_host(runner):
    found = {
        "web-1": [
            {"time": "2026-12-06T12:00:00+00:00", "action": "rollback", "release": "20261201_000000",
             "revision": "b" * 40, "subject": "Fix the login", "user": "ada", "outcome": "rolled back (was x)",
             "duration": None},
            {"time": "2026-12-06T11:00:00+00:00", "action": "deploy", "release": "20261202_000000",
             "revision": "c" * 40, "subject": None, "user": "ada", "outcome": "deployed", "duration": 12.5},
        ],
        "web-2": {"error": "Minion did not return. [No response]"},
    }  # fmt: skip
    lines = runner.history_table(found).splitlines()
    assert lines[0].split() == [
        "HOST",
        "TIME",
        "ACTION",
        "RELEASE",
        "REVISION",
        "SUBJECT",
        "USER",
        "OUTCOME",
        "SECONDS",
    ]
    assert lines[1].split()[:6] == ["web-1", "2026-12-06T12:00:00+00:00", "rollback", "20261201_000000", "b" * 10,
                                    "Fix"]  # fmt: skip
    assert lines[2].split()[-1] == "12.5" and "deployed" in lines[2]
    assert lines[3].split()[:3] == ["web-2", "-", "ERROR"] and len(lines) == 4


def test_history_without_an_environment_says_what_to_type(runner):
    res = runner.history()
    assert res["retcode"] == 1 and "salt-run vumi.history staging" in res["comment"]


def test_a_revert_that_fails_is_not_glossed_over(runner):
    def answer(step, host):
        if step == "publish" and host == "web-2":
            return {"ret": {"error": {"kind": "StageFailed", "message": "hook failed"}}, "retcode": 1}
        if step == "revert" and host == "web-1":
            return {"ret": "ERROR: another deploy of staging holds the lock", "retcode": 1}
        return {"ret": {"reverted": True}, "retcode": 0}

    res, _ = _deploy(runner, answer)
    lines = res["comment"].splitlines()
    assert lines[1] == "not every host could switch back (switched back: web-2); no webapp had been restarted", lines
    assert "  web-1: another deploy of staging holds the lock" in lines and res["retcode"] == 2
