"""
Fleet deploys, all or none to the end, with Salt's orchestrate runner, a
real salt-master and three minions (``web-1-*``, ``web-2-*``, ``web-3-*``) that pull
from one upstream repository, as a fleet does::

    salt 'web*' state.apply vumi pillar='{"branch": "staging"}'
    salt-run state.orchestrate vumi.orch.deploy pillar='{"branch": "staging", "target": "web*"}'

Each minion is a "host" with its own base_dir, supervisord and loopback ports
(support.fleet's per-minion pillar override). The tests are steps of one story
and run in file order: the old release served everywhere; a dry run; a new
commit orchestrated onto one host, then onto all three; then the failures, each
of which must leave every host on the release it had, serving: a commit that
cannot start, a push and a concurrent ``state.apply`` during the run, a publish
that fails on one host, a restart that fails on the second host of ``batch: 1``.
``pytest -s`` prints the wall times and the failure outputs.
"""

import contextlib
import fcntl
import json
import threading
import time

import pytest
import salt.output

import make_repo as sample
from support import tree
from support.fleet import kill_leftover_webapps, make_hosts, pillar_override, started_master
from support.helpers import http_get

pytestmark = pytest.mark.slow

ENV = "staging"
TARGET = "web*"
ORCH = "vumi.orch.deploy"


# --------------------------------------------------------------------------
# What the tests look at
# --------------------------------------------------------------------------


def current(host):
    link = host.env_root(ENV) / "current"
    return link.resolve().name if link.is_symlink() else None


def assert_serving(host, release, revision):
    """Every staging port of ``host`` answers over HTTP with ``release`` at ``revision``."""
    for port in host.ports[ENV]:
        status, body = http_get(port)
        assert status == 200, (host.id, port, body)
        assert (body["release"], body["revision"]) == (release, revision), (host.id, port, body)


def history(host):
    return tree.history(host.env_root(ENV))


def orchestrate(salt_run, test=False, **pillar):
    """
    ``salt-run state.orchestrate vumi.orch.deploy pillar=... [test=True]`` with ``branch``
    staging: (the CLI result, its wall time in seconds, the one state ``vumi-fleet-deploy``).
    """
    options = {"test": True} if test else {}
    started = time.monotonic()
    ret = salt_run.run("state.orchestrate", ORCH, pillar=dict({"branch": ENV}, **pillar), **options)
    elapsed = time.monotonic() - started
    assert isinstance(ret.data, dict) and "data" in ret.data, ret
    (states,) = ret.data["data"].values()  # one master
    assert isinstance(states, dict), ret  # a render error is a list of strings
    (state,) = states.values()
    return ret, elapsed, state


def readable(ret, opts):
    """What ``salt-run`` prints by default (the highstate outputter), without colour."""
    return salt.output.out_format(ret.data["data"], "highstate", dict(opts, color=False))


def served(hosts):
    """Per host: (current release, the revision its manifest names)."""
    out = {}
    for host in hosts:
        manifest = json.loads((host.env_root(ENV) / "current" / "release.json").read_text())
        out[host.id] = (current(host), manifest["revision"])
    return out


def assert_fleet_serves(hosts, expected):
    """Every port of every host answers with the (release, revision) ``expected`` names for its host."""
    for host in hosts:
        assert current(host) == expected[host.id][0], host.id
        assert_serving(host, *expected[host.id])


# --------------------------------------------------------------------------
# A master and three minions of this module's own, one upstream repository
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orch_master(salt_factories, tmp_path_factory):
    """A salt-master serving this repo's ``salt/`` and a pillar tree made here."""
    with started_master(salt_factories, tmp_path_factory.mktemp("orch-pillar"), "vumi-orch-master-") as master:
        yield master


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The fleet's one upstream repository."""
    return sample.make_repo(tmp_path_factory.mktemp("orch-upstream") / "sampleapp")


@pytest.fixture(scope="module")
def orch_hosts(orch_master, tmp_path_factory, upstream):
    """Three hosts, each with its own base_dir and two staging ports, pulling from ``upstream``."""
    layouts = [(prefix, {ENV: 2}) for prefix in ("web-1-", "web-2-", "web-3-")]
    return sorted(make_hosts(orch_master, tmp_path_factory, layouts, upstream), key=lambda h: h.id)


@pytest.fixture(scope="module")
def salt_cli(orch_master):
    return orch_master.salt_cli(timeout=180)


@pytest.fixture(scope="module")
def salt_run(orch_master):
    return orch_master.salt_run_cli(timeout=400)


@pytest.fixture(scope="module")
def orch_fleet(orch_master, orch_hosts, salt_cli, salt_run):
    """
    The three minions running, our modules synced to them and (runner, orchestration
    state) to the master. At teardown every webapp is stopped through the master
    before the daemons stop.
    """
    with contextlib.ExitStack() as stack:
        for host in orch_hosts:
            host.minion = orch_master.salt_minion_daemon(host.id)  # a test stops one: a host that does not answer
            stack.enter_context(host.minion.started())
        try:
            ret = salt_cli.run("saltutil.sync_all", minion_tgt=TARGET)
            assert ret.returncode == 0, ret
            assert set(ret.data) == {h.id for h in orch_hosts}, ret
            ret = salt_run.run("saltutil.sync_all")
            assert ret.returncode == 0, ret
            yield {host.id: host for host in orch_hosts}
        finally:
            salt_cli.run("vumi.stop_webapp_cluster", ENV, minion_tgt=TARGET)
            leftovers = kill_leftover_webapps(orch_hosts)
            assert not leftovers, f"vumi.stop_webapp_cluster left webapps running: {leftovers}"


# --------------------------------------------------------------------------
# The story's steps
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def old_release(orch_fleet, salt_cli):
    """``state.apply vumi`` everywhere: per host, the (release, revision) its webapps serve."""
    ret = salt_cli.run("state.apply", "vumi", pillar={"branch": ENV}, minion_tgt=TARGET)
    assert ret.returncode == 0, ret
    assert set(ret.data) == set(orch_fleet), ret
    for minion_id, states in ret.data.items():
        failed = {k: v["comment"] for k, v in states.items() if v["result"] is not True}
        assert not failed, (minion_id, failed)
    found = served(orch_fleet.values())
    assert_fleet_serves(orch_fleet.values(), found)
    return found


@pytest.fixture(scope="module")
def new_commit(old_release, upstream):
    return sample.commit_file(upstream, ENV, "CHANGES", "orchestrated deploy\n", "Orchestrated change")


@pytest.fixture(scope="module")
def fleet_deploy(orch_fleet, new_commit, salt_run):
    """The orchestrated deploy of the new commit to all three hosts."""
    return orchestrate(salt_run, target=TARGET)


def test_without_branch_and_target_the_run_fails_with_the_command_to_type(salt_run):
    ret = salt_run.run("state.orchestrate", ORCH)
    assert ret.returncode != 0, ret
    (state,) = ret.data["data"].values()
    (state,) = state.values()
    assert state["result"] is False
    assert """pillar='{"branch": "staging", "target": "web*"}'""" in state["comment"], state


def test_dry_run_names_hosts_revision_and_release_and_changes_nothing(orch_fleet, new_commit, old_release, salt_run):
    ret, _, state = orchestrate(salt_run, target=TARGET, test=True, release="20990101_000000")
    assert ret.returncode == 0, state
    assert state["result"] is None, state
    print("\ndry run:", state["comment"])
    for host in orch_fleet.values():
        assert host.id in state["comment"]
        assert state["changes"][host.id] == {"old": old_release[host.id][0], "new": "20990101_000000",
                                             "revision": new_commit}  # fmt: skip
    assert new_commit[:12] in state["comment"] and "20990101_000000" in state["comment"]
    assert_fleet_serves(orch_fleet.values(), old_release)
    for host in orch_fleet.values():
        assert host.releases(ENV) == [old_release[host.id][0]]


def test_one_host(orch_fleet, new_commit, old_release, salt_run):
    one, *others = orch_fleet.values()
    ret, elapsed, state = orchestrate(salt_run, target=one.id)
    print(f"\norchestrated deploy to 1 minion: {elapsed:.1f}s")
    assert ret.returncode == 0, state
    assert state["result"] is True, state
    (release,) = {c["new"] for c in state["changes"].values()}
    assert release != old_release[one.id][0]
    assert_serving(one, release, new_commit)
    assert_fleet_serves(others, old_release)  # not targeted: untouched


def test_whole_fleet(orch_fleet, new_commit, fleet_deploy, salt_cli):
    ret, elapsed, state = fleet_deploy
    print(f"\norchestrated deploy to 3 minions: {elapsed:.1f}s\n{state['comment']}")
    assert ret.returncode == 0, state
    assert state["result"] is True, state
    assert set(state["changes"]) == set(orch_fleet)
    (release,) = {c["new"] for c in state["changes"].values()}  # one name for the whole fleet
    assert_fleet_serves(orch_fleet.values(), {h: (release, new_commit) for h in orch_fleet})
    for host in orch_fleet.values():
        actions = [(e["action"], e.get("release")) for e in history(host)][-2:]
        assert actions == [("prepare", release), ("deploy", release)], (host.id, actions)
        assert not (host.env_root(ENV) / "HELD").exists(), "the run ends its hold"
    # the deployed revision is a grain: hosts can be targeted by what they run
    ret = salt_cli.run("-G", "test.ping", minion_tgt=f"vumi:{ENV}:revision:{new_commit}")
    assert ret.returncode == 0, ret
    assert set(ret.data) == set(orch_fleet), ret


@pytest.fixture(scope="module")
def live(fleet_deploy, orch_fleet):
    """What the fleet serves after the whole-fleet deploy: every failure below must leave it so."""
    return served(orch_fleet.values())


def test_a_commit_that_cannot_start_switches_no_host(orch_fleet, live, upstream, salt_run, orch_master):
    good = (upstream / "sampleapp" / "wsgi.py").read_text()
    sample.commit_file(upstream, ENV, "sampleapp/wsgi.py", "raise RuntimeError('broken on purpose')\n", "Broken")
    try:
        ret, _, state = orchestrate(salt_run, target=TARGET)
    finally:
        sample.commit_file(upstream, ENV, "sampleapp/wsgi.py", good, "Fixed")
    print("\na commit that cannot start, as salt-run prints it:\n" + readable(ret, orch_master.config))
    assert ret.returncode != 0, state
    assert state["result"] is False
    first = state["comment"].splitlines()[0]
    assert first.startswith(f"{min(orch_fleet)} failed at prepare: "), first
    assert "stage 'health'" in first and "Worker failed to boot" in state["comment"], state["comment"]
    assert "nothing was published" in state["comment"]
    assert_fleet_serves(orch_fleet.values(), live)
    for host in orch_fleet.values():
        assert host.releases(ENV)[-1] == live[host.id][0], "the new release is discarded"


def test_a_push_and_a_deploy_during_the_run_change_nothing(orch_fleet, orch_hosts, live, upstream, salt_run, salt_cli):
    """
    The third host's prepare waits for its deploy lock (held here) while the others
    have prepared: upstream moves, and a plain ``state.apply`` on the first host is
    refused, naming the fleet deploy's release. Then the lock is let go: the third
    host fetches the moved branch but checks out the commit the run resolved.
    """
    first, _, last = orch_hosts
    resolved = sample.commit_file(upstream, ENV, "CHANGES", "the fleet's commit\n", "Fleet commit")
    outcome = {}
    lockfile = last.env_root(ENV) / ".deploy.lock"
    with open(lockfile, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        run = threading.Thread(target=lambda: outcome.update(res=orchestrate(salt_run, target=TARGET)))
        run.start()
        try:
            deadline = time.monotonic() + 120
            release = None
            while release is None or not any(
                e.get("action") == "prepare" and e.get("release") == release for e in history(first)
            ):
                assert time.monotonic() < deadline and run.is_alive(), outcome
                time.sleep(0.5)
                with contextlib.suppress(OSError, ValueError):
                    release = json.loads((first.env_root(ENV) / "HELD").read_text())["release"]
            pushed = sample.commit_file(upstream, ENV, "CHANGES", "pushed during the run\n", "Pushed meanwhile")
            ret = salt_cli.run("state.apply", "vumi", pillar={"branch": ENV}, minion_tgt=first.id)
            refused = ret.data  # one minion targeted by id: its return, unwrapped
            deployed = next(v for k, v in refused.items() if "vumi_|-" in k and "_|-deployed" in k)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
    run.join(300)
    print("\nconcurrent state.apply:", deployed["comment"])
    assert ret.returncode != 0 and deployed["result"] is False, refused
    assert f"held by the fleet deploy of release {release}" in deployed["comment"], deployed
    ret, _, state = outcome["res"]
    assert ret.returncode == 0 and state["result"] is True, state
    assert_fleet_serves(orch_fleet.values(), {h: (release, resolved) for h in orch_fleet})
    assert pushed != resolved
    # the hold ended with the run: the next plain apply deploys the pushed commit
    ret = salt_cli.run("state.apply", "vumi", pillar={"branch": ENV}, minion_tgt=first.id)
    assert ret.returncode == 0, ret
    assert served([first])[first.id][1] == pushed


@pytest.fixture
def steady(orch_fleet, salt_cli):
    """The fleet brought to the branch tip, one release everywhere: what each failure below must keep."""
    ret = salt_cli.run("state.apply", "vumi", pillar={"branch": ENV}, minion_tgt=TARGET)
    assert ret.returncode == 0, ret
    return served(orch_fleet.values())


def test_a_publish_that_fails_on_one_host_switches_the_others_back(
    orch_fleet, orch_hosts, steady, upstream, orch_master, salt_cli, salt_run
):
    sample.commit_file(upstream, ENV, "CHANGES", "a change to publish\n", "To publish")
    broken = orch_hosts[1]
    with pillar_override(orch_master, salt_cli, orch_hosts, broken, hooks={"after_publish": ["exit 7"]}):
        ret, _, state = orchestrate(salt_run, target=TARGET)
    print("\na publish failure, as salt-run prints it:\n" + readable(ret, orch_master.config))
    assert ret.returncode != 0 and state["result"] is False, state
    first = state["comment"].splitlines()[0]
    assert first.startswith(f"{broken.id} failed at publish: "), first
    assert "exit 7" in first, first
    assert "no webapp had been restarted" in state["comment"]
    assert_fleet_serves(orch_fleet.values(), steady)
    for host in orch_fleet.values():
        assert history(host)[-1]["action"] == "rollback", host.id


def test_a_restart_that_fails_on_the_second_host_puts_the_fleet_back(
    orch_fleet, orch_hosts, steady, upstream, orch_master, salt_run
):
    """
    The new commit does not start on one port of the second host (``FAIL_ON_PORTS``);
    its health check (on a spare port) passes. With ``batch: 25%`` (of three hosts:
    one at a time) the first host has restarted onto it when the second fails: both
    restart back; the third switches back and its webapps were never restarted.
    """
    first, broken, last = orch_hosts
    untouched = pids(last)
    sample.commit_file(upstream, ENV, "FAIL_ON_PORTS", f"{broken.ports[ENV][0]}\n", "Breaks one port")
    try:
        ret, elapsed, state = orchestrate(salt_run, target=TARGET, batch="25%")
    finally:
        sample.commit_file(upstream, ENV, "FAIL_ON_PORTS", "\n", "Mends the port")
    print(f"\na restart failure ({elapsed:.1f}s), as salt-run prints it:\n" + readable(ret, orch_master.config))
    assert ret.returncode != 0 and state["result"] is False, state
    lines = state["comment"].splitlines()
    assert lines[0].startswith(f"{broken.id} failed at restart: "), lines[0]
    assert str(broken.ports[ENV][0]) in lines[0], lines[0]
    assert f"restarted back onto it: {first.id}, {broken.id}" in state["comment"], state["comment"]
    assert "FAILED TOO" not in state["comment"]
    assert_fleet_serves(orch_fleet.values(), steady)
    for host in (first, broken):  # restarted back: new processes, old release
        assert history(host)[-1]["action"] == "rollback", host.id
    assert pids(last) == untouched, "the third host's batch never came"


def pids(host):
    """The process id of each of ``host``'s webapps, as its supervisord reports them."""
    return {name: info["pid"] for name, info in host.supervisord.processes().items()}


def test_a_pinned_revision_goes_to_the_compound_targeted_hosts_only(orch_fleet, orch_hosts, steady, upstream, salt_run):
    """``revision`` pins the commit (the one served, not the tip pushed since); a compound target picks the hosts."""
    first, middle, last = orch_hosts
    pinned = sample.git(upstream, "rev-parse", f"refs/heads/{ENV}")
    sample.commit_file(upstream, ENV, "CHANGES", "pushed, not pinned\n", "Not pinned")
    target = f"{first.id} or E@^{last.id}$"
    ret, _, state = orchestrate(salt_run, target=target, tgt_type="compound", revision=pinned)
    assert ret.returncode == 0 and state["result"] is True, state
    assert set(state["changes"]) == {first.id, last.id}, state["changes"]
    (release,) = {c["new"] for c in state["changes"].values()}
    assert pinned != sample.git(upstream, "rev-parse", f"refs/heads/{ENV}")
    assert_fleet_serves([first, last], {first.id: (release, pinned), last.id: (release, pinned)})
    assert_fleet_serves([middle], steady)  # not targeted


def test_a_host_that_does_not_answer_fails_the_run_before_anything_is_prepared(
    orch_fleet, orch_hosts, steady, upstream, orch_master, salt_run
):
    """
    The third host's minion is down for the run (its key accepted: the target matches
    it). The run's first question, which version of the bundle each host runs, gets no
    answer from it within ``timeout``: the run stops there, naming it, before any host
    prepared or was held.
    """
    first, middle, last = orch_hosts
    sample.commit_file(upstream, ENV, "CHANGES", "while a host is down\n", "A host is down")
    before = {host.id: host.releases(ENV) for host in orch_hosts}
    with last.minion.stopped():
        ret, elapsed, state = orchestrate(salt_run, target=TARGET, timeout=15)
    print(f"\na host that does not answer ({elapsed:.1f}s):\n" + readable(ret, orch_master.config))
    assert ret.returncode != 0 and state["result"] is False, state
    lines = state["comment"].splitlines()
    assert lines[0] == f"{last.id} failed at version: did not answer vumi.version within 15s", lines[0]
    assert not any(h.id in state["comment"] for h in (first, middle)), state["comment"]
    assert_fleet_serves(orch_fleet.values(), steady)
    assert {host.id: host.releases(ENV) for host in orch_hosts} == before, "nothing was prepared"


def test_cleanup_removes_a_release_prepared_but_never_published(orch_fleet, live, salt_cli):
    host = next(iter(orch_fleet.values()))
    ret = salt_cli.run("vumi.prepare", ENV, minion_tgt=host.id)
    assert ret.returncode == 0, ret
    prepared = ret.data["release"]
    assert prepared in host.releases(ENV) and current(host) != prepared
    ret = salt_cli.run("vumi.cleanup", ENV, minion_tgt=host.id)
    assert ret.returncode == 0, ret
    assert prepared in ret.data["removed"]
    assert prepared not in host.releases(ENV)
    assert current(host) in host.releases(ENV)


def test_discard_refuses_current_and_published_releases(orch_fleet, live, salt_cli):
    host = next(iter(orch_fleet.values()))
    ret = salt_cli.run("vumi.discard", ENV, current(host), minion_tgt=host.id)
    assert ret.returncode != 0
    assert "is current; refusing" in str(ret.data), ret
    earlier = [r for r in host.releases(ENV) if r != current(host)]
    assert earlier, host.releases(ENV)
    ret = salt_cli.run("vumi.discard", ENV, earlier[-1], minion_tgt=host.id)
    assert ret.returncode != 0
    assert "has been published before" in str(ret.data), ret
    assert earlier[-1] in host.releases(ENV)


def test_a_given_release_name_must_sort_after_those_used(orch_fleet, live, salt_cli):
    host = next(iter(orch_fleet.values()))
    releases = host.releases(ENV)
    ret = salt_cli.run("vumi.prepare", ENV, release="20000101_000000", minion_tgt=host.id)
    assert ret.returncode != 0
    assert "does not sort after" in str(ret.data), ret
    assert host.releases(ENV) == releases
