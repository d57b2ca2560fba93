"""
The ``vumi.deploy`` runner's own logic (issue #16): the batches, reading a minion's
error out of what it returned, refusing bad arguments before any minion is asked.
tests/integration/test_orchestrate.py runs it for real against a master and minions.
"""

import importlib.util
import pathlib

import pytest

RUNNER = pathlib.Path(__file__).resolve().parents[2] / "salt" / "_runners" / "vumi.py"


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
        "deploy of staging failed at stage 'health': boom"
    )
    assert runner._error({"release": "20261201_000000"}, 0) is None
    states = {
        "vumi_|-a_|-staging_|-webapp_running": {"result": False, "comment": "port 8001 could not be restarted"},
        "vumi_|-b_|-staging_|-tree": {"result": True, "comment": "in place"},
    }
    assert runner._error(states, 2) == "port 8001 could not be restarted"
    assert runner._error({"x": {"result": True, "comment": ""}}, 0) is None
    assert runner._error(["Rendering SLS 'base:vumi.webapp' failed"], 1) == "Rendering SLS 'base:vumi.webapp' failed"


@pytest.mark.parametrize(("kwargs", "said"), [
    ({}, "name the environment and the hosts"),
    ({"branch": "staging"}, "name the environment and the hosts"),
    ({"branch": "staging", "tgt": "web*", "batch": "two"}, "invalid batch 'two'"),
])  # fmt: skip
def test_bad_arguments_fail_the_run_before_any_minion_is_asked(runner, kwargs, said):
    res = runner.deploy(**kwargs)
    assert res["result"] is False and said in res["comment"], res
    assert runner.__context__["retcode"] == 1
