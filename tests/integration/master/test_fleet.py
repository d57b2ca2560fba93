"""
With a real salt-master and two minions: the README's commands, typed
through the ``salt`` CLI against the glob ``web*``::

    salt 'web*' saltutil.sync_all
    salt 'web*' state.apply vumi pillar='{"branch": "staging"}'
    salt 'web*' vumi.restart_webapp staging 8001
    salt 'web*' vumi.execute production "./manage.py syncdb"

Both minions run on this one machine, so each has its own ports: the single-port
restart is sent to each minion by its id, and the whole fleet is restarted with
``vumi.restart_webapp_cluster staging`` (the configured ports of each).

The tests of this file are steps of one story and run in file order; the
expensive steps (sync, the applies) are module fixtures, so any test can also
be run on its own.
"""

import pytest

import make_repo as sample
from support.fleet import pillar_override
from support.helpers import http_get

pytestmark = pytest.mark.slow

TARGET = "web*"


@pytest.fixture(scope="module")
def salt_cli(salt_master):
    # --timeout: how long the CLI waits for minions that stop answering find_job
    return salt_master.salt_cli(timeout=180)


@pytest.fixture(scope="module")
def synced(fleet, salt_cli):
    """``salt 'web*' saltutil.sync_all``: our modules are unknown to minions before it."""
    ret = salt_cli.run("saltutil.sync_all", minion_tgt=TARGET)
    assert ret.returncode == 0, ret
    assert set(ret.data) == set(fleet), ret
    return ret


def apply(salt_cli, env):
    return salt_cli.run("state.apply", "vumi", pillar={"branch": env}, minion_tgt=TARGET)


@pytest.fixture(scope="module")
def staging_applied(synced, fleet, salt_cli):
    return apply(salt_cli, "staging")


@pytest.fixture(scope="module")
def production_applied(staging_applied, fleet, salt_cli):
    return apply(salt_cli, "production")


def state_results(ret, fleet):
    """Per minion, ``{state id: result dict}``; fails on a render error (a list of strings)."""
    assert set(ret.data) == set(fleet), ret
    for minion_id, states in ret.data.items():
        assert isinstance(states, dict) and states, f"{minion_id}: {states}"
    return ret.data


def by_function(states, function):
    """The one state of ``function`` (e.g. ``vumi.deployed``) in a state.apply return."""
    module, fun = function.split(".")
    # keys read "<module>_|-<id>_|-<name>_|-<function>"
    found = [v for k, v in states.items() if k.startswith(f"{module}_|-") and k.endswith(f"_|-{fun}")]
    assert len(found) == 1, (function, list(states))
    return found[0]


def assert_serving(host, env):
    """Every configured port of ``env`` answers over HTTP with that env at its branch's revision."""
    pids = {}
    for port in host.ports[env]:
        status, body = http_get(port)
        assert status == 200, (host.id, port, body)
        assert body["env"] == env, (host.id, port, body)
        assert body["revision"] == host.revision(env), (host.id, port, body)
        assert body["port"] == port
        pids[port] = body["ppid"]
    return pids


def test_sync_all_brings_our_modules_to_every_minion(synced, fleet):
    for minion_id, found in synced.data.items():
        assert "modules.vumi" in found["modules"], (minion_id, found)
        assert "states.vumi" in found["states"], (minion_id, found)
        # and the module's helpers, which it imports from the utils folder beside its own
        assert {f"utils.{name}" for name in ("vumi_settings", "vumi_pipeline", "vumi_webapp")} <= set(found["utils"]), (
            minion_id,
            found,
        )


def test_apply_staging_deploys_and_serves_on_every_minion(staging_applied, fleet):
    assert staging_applied.returncode == 0, staging_applied
    for minion_id, states in state_results(staging_applied, fleet).items():
        host = fleet[minion_id]
        failed = {k: v["comment"] for k, v in states.items() if v["result"] is not True}
        assert not failed, (minion_id, failed)
        deployed = by_function(states, "vumi.deployed")
        assert deployed["changes"]["release"]["old"] is None
        assert deployed["changes"]["release"]["new"] == host.releases("staging")[-1]
        assert deployed["changes"]["revision"]["new"] == host.revision("staging")
        webapp = by_function(states, "vumi.webapp_running")
        assert sorted(set(webapp["changes"]) - {"programs"}) == sorted(str(p) for p in host.ports["staging"])
        assert_serving(host, "staging")
        assert (host.env_root("staging") / "current").is_symlink()


def test_restart_webapp_on_one_port_of_each_minion(staging_applied, fleet, salt_cli):
    for host in fleet.values():
        first, second = host.ports["staging"]
        before = assert_serving(host, "staging")
        # salt '<minion>' vumi.restart_webapp staging <port>
        ret = salt_cli.run("vumi.restart_webapp", "staging", second, minion_tgt=host.id)
        assert ret.returncode == 0, ret
        assert ret.data["port"] == second
        assert ret.data["old_pid"] == before[second]
        assert ret.data["pid"] != before[second]
        after = assert_serving(host, "staging")
        assert after[second] == ret.data["pid"]
        assert after[first] == before[first], "the other port must not be restarted"


def test_restart_webapp_cluster_across_the_fleet(staging_applied, fleet, salt_cli):
    before = {host.id: assert_serving(host, "staging") for host in fleet.values()}
    ret = salt_cli.run("vumi.restart_webapp_cluster", "staging", minion_tgt=TARGET)
    assert ret.returncode == 0, ret
    assert set(ret.data) == set(fleet)
    for minion_id, restarted in ret.data.items():
        host = fleet[minion_id]
        assert [r["port"] for r in restarted] == host.ports["staging"]
        after = assert_serving(host, "staging")
        for r in restarted:
            assert r["old_pid"] == before[minion_id][r["port"]]
            assert r["pid"] == after[r["port"]] != r["old_pid"]


def test_second_staging_apply_changes_nothing(staging_applied, fleet, salt_cli):
    releases = {host.id: host.releases("staging") for host in fleet.values()}
    pids = {host.id: assert_serving(host, "staging") for host in fleet.values()}
    predicted = salt_cli.run("state.apply", "vumi", pillar={"branch": "staging"}, test=True, minion_tgt=TARGET)
    for ret in (predicted, apply(salt_cli, "staging")):
        assert ret.returncode == 0, ret
        for minion_id, states in state_results(ret, fleet).items():
            host = fleet[minion_id]
            assert all(v["result"] is True for v in states.values()), (minion_id, states)
            changed = {k: v["changes"] for k, v in states.items() if v["changes"]}
            assert not changed, (minion_id, changed)
            assert host.releases("staging") == releases[minion_id], "no new release folder"
            assert assert_serving(host, "staging") == pids[minion_id], "no webapp restarted"


def test_apply_production_beside_staging(production_applied, fleet):
    assert production_applied.returncode == 0, production_applied
    for minion_id, states in state_results(production_applied, fleet).items():
        host = fleet[minion_id]
        failed = {k: v["comment"] for k, v in states.items() if v["result"] is not True}
        assert not failed, (minion_id, failed)
        assert by_function(states, "vumi.deployed")["changes"]["revision"]["new"] == host.revision("production")
        assert_serving(host, "production")
        assert_serving(host, "staging")  # the other environment keeps running


def test_execute_syncdb_in_production(production_applied, fleet, salt_cli):
    # salt 'web*' vumi.execute production "./manage.py syncdb"
    ret = salt_cli.run("vumi.execute", "production", "./manage.py syncdb", minion_tgt=TARGET)
    assert ret.returncode == 0, ret
    assert set(ret.data) == set(fleet)
    for minion_id, result in ret.data.items():
        host = fleet[minion_id]
        assert result["retcode"] == 0, (minion_id, result)
        assert "Synced" in result["stdout"], (minion_id, result)
        # tmp/ of the release is the environment's shared/tmp
        assert (host.env_root("production") / "shared" / "tmp" / "sample.sqlite").is_file()


def test_execute_failing_command_fails_the_job(production_applied, fleet, salt_cli):
    ret = salt_cli.run("vumi.execute", "production", "./manage.py fail", minion_tgt=TARGET)
    assert ret.returncode != 0, ret
    assert set(ret.data) == set(fleet)
    for minion_id, result in ret.data.items():
        assert result["retcode"] == 3, (minion_id, result)
        assert "failing on purpose" in result["stderr"], (minion_id, result)


def test_salt_run_vumi_status_rows_match_each_minions_current(production_applied, salt_master, fleet, salt_cli):
    """The fleet view: salt-run vumi.status 'web*' has a row per host and environment."""
    run = salt_master.salt_run_cli(timeout=180)
    ret = run.run("saltutil.sync_runners")
    assert ret.returncode == 0 and "runners.vumi" in ret.data, ret
    ret = run.run("vumi.status", TARGET)
    assert ret.returncode == 0 and isinstance(ret.data, list), ret
    rows = {(r["host"], r["environment"]): r for r in ret.data}
    assert set(rows) == {(m, env) for m in fleet for env in ("staging", "production")}, ret.data
    for (minion_id, env), row in rows.items():
        current = salt_cli.run("vumi.current", env, minion_tgt=minion_id).data
        assert (row["release"], row["revision"]) == (current["release"], current["revision"]), row
        assert row["behind"] is False, row  # nothing pushed since
        assert row["running"] == sorted(fleet[minion_id].ports[env]) == sorted(row["answering"]), row
    envs = salt_cli.run("vumi.environments", minion_tgt=TARGET)
    assert all(found == ["production", "staging"] for found in envs.data.values()), envs


def test_highstate_converges_every_environment_the_host_lists(
    production_applied, salt_master, fleet, fleet_hosts, salt_cli
):
    """``state.highstate`` with no pillar ``branch``: each environment of the host's ``vumi:deploy``."""
    host = fleet_hosts[0]
    for env in ("staging", "production"):
        sample.commit_file(host.repo, env, "NEWS", f"highstate {env}\n", f"For highstate on {env}")
    with pillar_override(salt_master, salt_cli, fleet_hosts, host, deploy=["staging", "production"]):
        ret = salt_cli.run("state.highstate", minion_tgt=host.id)
    assert ret.returncode == 0, ret
    states = ret.data  # one minion targeted by id: its return, unwrapped
    deployed = {v["name"]: v for k, v in states.items() if k.startswith("vumi_|-") and k.endswith("_|-deployed")}
    assert set(deployed) == {"staging", "production"}, list(states)
    for env, state in deployed.items():
        assert state["result"] is True and state["changes"]["revision"]["new"] == host.revision(env), state
        assert_serving(host, env)
