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
import signal
import subprocess
import threading
import time

import pytest
import salt.output

import make_repo as sample
from support import tree
from support.fleet import kill_leftover_webapps, make_hosts, pillar_override, started_master
from support.helpers import http_get
from support.webhooks import receiver

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
    lines = state["comment"].splitlines()
    assert [line.split(" ", 1)[0] for line in lines[:3]] == sorted(orch_fleet), "one line per host that failed"
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
    assert lines[0] == f"{last.id} did not answer within 15 s at version; it is unreachable or busy", lines[0]
    assert not any(h.id in state["comment"] for h in (first, middle)), state["comment"]
    assert_fleet_serves(orch_fleet.values(), steady)
    assert {host.id: host.releases(ENV) for host in orch_hosts} == before, "nothing was prepared"


# --------------------------------------------------------------------------
# Fleet faults: a host that stops, a run that dies, exit codes, dry runs, canaries
# --------------------------------------------------------------------------


def deploy(salt_run, *args, **kwargs):
    """``salt-run vumi.deploy staging <args> <kwargs>``: (the CLI result, its report, its wall time)."""
    started = time.monotonic()
    ret = salt_run.run("vumi.deploy", ENV, *args, **kwargs)
    return ret, ret.data, time.monotonic() - started


def wait_for(what, check, limit=120):
    deadline = time.monotonic() + limit
    while not (found := check()):
        assert time.monotonic() < deadline, f"waited {limit}s for {what}"
        time.sleep(0.3)
    return found


def held(host):
    with contextlib.suppress(OSError, ValueError):
        return json.loads((host.env_root(ENV) / "HELD").read_text())
    return None


def status_rows(salt_run):
    ret = salt_run.run("vumi.status", TARGET)
    assert ret.returncode == 0, ret
    return {row["host"]: row for row in ret.data if row.get("environment") == ENV}


def test_exit_codes_an_empty_target_and_a_failure(orch_fleet, orch_hosts, steady, salt_run, orch_master, salt_cli):
    ret, report, _ = deploy(salt_run, "nomatch*")
    assert ret.returncode == 1, ret
    assert report["comment"] == "no minion matches 'nomatch*' (glob): nothing was deployed", report
    with pillar_override(orch_master, salt_cli, orch_hosts, orch_hosts[1], hooks={"before_publish": ["exit 3"]}):
        ret, report, elapsed = deploy(salt_run, TARGET)
    print(f"\na failed run ({elapsed:.1f}s), exit {ret.returncode}:\n{report['comment']}")
    assert ret.returncode == 1, ret
    assert report["comment"].startswith(f"{orch_hosts[1].id} failed at prepare: "), report["comment"]
    assert "Traceback" not in report["comment"]
    assert_fleet_serves(orch_fleet.values(), steady)


def test_a_host_that_stops_during_prepare_fails_the_run_in_time_and_the_others_are_unheld(
    orch_fleet, orch_hosts, steady, upstream, orch_master, salt_cli, salt_run
):
    """
    The third host's prepare is slow (a hook sleeps) and its minion is stopped while
    it runs: the run fails at prepare within ``timeout`` (+30 s), naming it; the
    others are unheld at once, on the release they had. Back, the host is held by a
    run that is gone: a deploy says so, and ``force=True`` recovers it and deploys.
    """
    first, middle, last = orch_hosts
    sample.commit_file(upstream, ENV, "CHANGES", "a host stops\n", "A host stops")
    outcome = {}
    with pillar_override(orch_master, salt_cli, orch_hosts, last, hooks={"before_publish": ["sleep 40"]}):
        run = threading.Thread(target=lambda: outcome.update(res=deploy(salt_run, TARGET, timeout=20)))
        run.start()
        wait_for("the third host's hold", lambda: held(last))
        time.sleep(1)
        last.minion.terminate()
        try:
            run.join(120)
            ret, report, elapsed = outcome["res"]
        finally:
            last.minion.start()
        wait_for("the host back", lambda: salt_cli.run("test.ping", minion_tgt=last.id).data is True, limit=90)
    print(f"\na host stopped during prepare ({elapsed:.1f}s), exit {ret.returncode}:\n{report['comment']}")
    assert ret.returncode == 1, ret
    assert elapsed < 20 + 30, elapsed
    lines = report["comment"].splitlines()
    assert lines[0] == f"{last.id} did not answer within 20 s at prepare; it is unreachable or busy", lines
    assert held(first) is None and held(middle) is None, "the others are unheld at once"
    assert_fleet_serves([first, middle], steady)
    gone = held(last)
    assert gone and gone["run"] == report["run"], gone
    # back: a deploy is refused, naming the run that is gone; force=True recovers, then deploys
    ret, report, _ = deploy(salt_run, TARGET)
    print("\nthe next deploy:\n" + report["comment"])
    assert ret.returncode == 1
    assert f"run {gone['run']} is gone (its runner stopped)" in report["comment"], report["comment"]
    ret, report, elapsed = deploy(salt_run, TARGET, force=True)
    print(f"\nforce=True ({elapsed:.1f}s): {report['comment']}")
    assert ret.returncode == 0, report["comment"]
    revision = sample.git(upstream, "rev-parse", f"refs/heads/{ENV}")
    assert_fleet_serves(orch_fleet.values(), {h: (report["release"], revision) for h in orch_fleet})
    assert gone["release"] not in last.releases(ENV), "the dead run's prepared release is dropped"


def test_sigterm_stops_a_run_which_undoes_and_reports(orch_fleet, orch_hosts, steady, upstream, orch_master,
                                                      salt_cli, salt_run):  # fmt: skip
    """``salt-run vumi.deploy`` told to stop (SIGTERM) during prepare: it undoes, unholds, reports, exits 1."""
    last = orch_hosts[-1]
    sample.commit_file(upstream, ENV, "CHANGES", "a run told to stop\n", "Told to stop")
    with pillar_override(orch_master, salt_cli, orch_hosts, last, hooks={"before_publish": ["sleep 15"]}):
        proc = subprocess.Popen(salt_run.cmdline("vumi.deploy", ENV, TARGET), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        try:
            wait_for("the third host's hold", lambda: held(last))
            stopped = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    report = json.loads(out)
    print(f"\nSIGTERM ({time.monotonic() - stopped:.1f}s to stop), exit {proc.returncode}:\n{report['comment']}")
    assert proc.returncode == 1, out
    assert report["comment"].startswith("the run failed at prepare: stopped by SIGTERM"), report["comment"]
    assert "nothing was published" in report["comment"] and "FAILED TOO" not in report["comment"]
    assert not any(held(h) for h in orch_hosts), "every host unheld"
    assert_fleet_serves(orch_fleet.values(), steady)


def test_a_run_that_dies_during_publish_is_told_truthfully_and_recovered(
    orch_fleet, orch_hosts, steady, upstream, orch_master, salt_cli, salt_run
):
    """
    The master stops (and ``salt-run`` with it) while the last host runs its
    ``after_publish`` hook: every host's ``current`` is the new release while every
    port serves the old one. ``vumi.status`` says so; ``vumi.recover`` puts every
    host back on the release they serve, unheld; ``vumi.status`` says that too.
    """
    last = orch_hosts[-1]
    sample.commit_file(upstream, ENV, "CHANGES", "the run dies\n", "The run dies")
    with pillar_override(orch_master, salt_cli, orch_hosts, last, hooks={"after_publish": ["sleep 30"]}):
        proc = subprocess.Popen(salt_run.cmdline("vumi.deploy", ENV, TARGET), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            new = wait_for("every host published", lambda: len({current(h) for h in orch_hosts}) == 1
                           and current(last) != steady[last.id][0] and current(last))  # fmt: skip
            with orch_master.stopped():
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        for host in orch_hosts:  # a minion may take minutes to notice its master is back: restarted, as an init would
            host.minion.terminate()
            host.minion.start()
            wait_for(f"{host.id} back", lambda h=host: salt_cli.run("test.ping", minion_tgt=h.id).data is True, 90)
    before = status_rows(salt_run)
    table = salt_run.run("vumi.status", TARGET, "table=True").stdout
    print(f"\nafter the run died:\n{table}")
    for host in orch_hosts:
        row = before[host.id]
        assert row["release"] == new, row  # current points at the new release...
        assert set(row["releases"].values()) == {steady[host.id][0]}, row  # ...the ports serve the old one
        assert row["held"] and row["held"]["runner"] == "gone", row
    assert "(not restarted)" in table and "runner gone" in table
    ret = salt_run.run("vumi.recover", ENV, TARGET)
    print(f"\nvumi.recover, exit {ret.returncode}:\n{ret.data['comment']}")
    assert ret.returncode == 0, ret
    assert_fleet_serves(orch_fleet.values(), steady)
    after = status_rows(salt_run)
    for host in orch_hosts:
        row = after[host.id]
        assert row["release"] == steady[host.id][0] and row["held"] is None, row
        assert set(row["releases"].values()) == {steady[host.id][0]}, row
    print(salt_run.run("vumi.status", TARGET, "table=True").stdout)


def test_an_undoing_that_fails_exits_2_and_recover_mends_it(
    orch_fleet, orch_hosts, steady, upstream, orch_master, salt_cli, salt_run
):
    """The publish fails on the second host; the first host's deploy lock is taken meanwhile, so its revert fails."""
    first, broken, _ = orch_hosts
    sample.commit_file(upstream, ENV, "CHANGES", "an undo that fails\n", "Undo fails")
    outcome = {}
    with (
        pillar_override(orch_master, salt_cli, orch_hosts, broken, hooks={"after_publish": ["sleep 4; exit 7"]}),
        pillar_override(orch_master, salt_cli, orch_hosts, first, lock_timeout=2),
    ):
        run = threading.Thread(target=lambda: outcome.update(res=deploy(salt_run, TARGET)))
        run.start()
        wait_for("the first host published", lambda: current(first) != steady[first.id][0])
        with open(first.env_root(ENV) / ".deploy.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            run.join(120)
    ret, report, _ = outcome["res"]
    print(f"\nan undo that fails, exit {ret.returncode}:\n{report['comment']}")
    assert ret.returncode == 2, ret
    assert report["comment"].startswith(f"{broken.id} failed at publish: "), report["comment"]
    assert "THE UNDOING FAILED TOO" in report["comment"] and f"  {first.id}: " in report["comment"]
    assert "not every host could switch back" in report["comment"], "no claim the undoing did not make"
    ret = salt_run.run("vumi.recover", ENV, TARGET)
    assert ret.returncode == 0, ret
    assert_fleet_serves(orch_fleet.values(), steady)


def test_a_dry_run_checks_every_host_and_predicts_a_failure(
    orch_fleet, orch_hosts, steady, orch_master, salt_cli, salt_run
):
    broken = orch_hosts[2]
    with pillar_override(orch_master, salt_cli, orch_hosts, broken, requirements="config/missing.txt"):
        ret, report, elapsed = deploy(salt_run, TARGET, test=True)
    print(f"\na dry run ({elapsed:.1f}s), exit {ret.returncode}:\n{report['comment']}")
    assert ret.returncode == 1 and report["result"] is False, report
    assert report["comment"].startswith(f"would fail on {broken.id} of 3 hosts:"), report["comment"]
    assert "config/missing.txt" in report["comment"]
    ret, report, _ = deploy(salt_run, TARGET, test=True)
    assert ret.returncode == 0 and report["result"] is None, report
    assert "vumi.check passed on each" in report["comment"]
    assert_fleet_serves(orch_fleet.values(), steady)


def test_a_canary_that_fails_goes_back_and_the_others_never_switch(
    orch_fleet, orch_hosts, steady, upstream, salt_run, orch_master, event_listener
):
    """The release answers 500 on the canary's first port 5 s after it starts (``FAIL_LATER_ON_PORTS``)."""
    canary, *others = orch_hosts
    untouched = {h.id: pids(h) for h in others}
    sample.commit_file(upstream, ENV, "FAIL_LATER_ON_PORTS", f"{canary.ports[ENV][0]}\n", "Fails later on one port")
    started = time.time()
    try:
        ret, report, elapsed = deploy(salt_run, TARGET, canary=1, canary_wait=20)
    finally:
        sample.commit_file(upstream, ENV, "FAIL_LATER_ON_PORTS", "\n", "Mends it")
    print(f"\na canary that fails ({elapsed:.1f}s), exit {ret.returncode}:\n{report['comment']}")
    assert ret.returncode == 1, ret
    first = report["comment"].splitlines()[0]
    assert first == f"{canary.id} failed at canary: port {canary.ports[ENV][0]} does not answer HTTP below 500", first
    assert f"restarted back onto it: {canary.id}" in report["comment"]
    assert_fleet_serves(orch_fleet.values(), steady)
    assert {h.id: pids(h) for h in others} == untouched, "the others were never restarted"
    for host in others:
        assert history(host)[-1]["action"] == "discard", "never switched"

    def phases():
        events = event_listener.get_events([(orch_master.id, f"vumi/fleet/{ENV}/*")], after_time=started)
        return [e.tag.rsplit("/", 1)[1] for e in sorted(events, key=lambda e: e.stamp)]

    wait_for("the run's last event", lambda: "end" in phases(), limit=30)
    phases = phases()
    print("fleet events:", phases)
    assert phases == ["start", "prepare", "publish", "restart", "failed", "undone", "end"], phases


def test_a_canary_that_holds_lets_the_others_follow(orch_fleet, orch_hosts, steady, upstream, salt_run):
    """And the master POSTs each phase of the run to a webhook (``notify``)."""
    sample.commit_file(upstream, ENV, "CHANGES", "a canary that holds\n", "Canary holds")
    with receiver() as hook:
        notify = json.dumps([{"url": f"{hook.url}/fleet", "events": ["fleet/*"]}])
        ret, report, elapsed = deploy(salt_run, TARGET, canary=1, canary_wait=6, notify=notify)
    print(f"\na canary that holds ({elapsed:.1f}s): {report['comment']}")
    events = [g["body"]["event"] for g in hook.got]
    print("webhook:", events)
    assert events == ["fleet/start", "fleet/prepare", "fleet/publish", "fleet/restart", "fleet/canary",
                      "fleet/publish", "fleet/restart", "fleet/end"], events  # fmt: skip
    end = hook.got[-1]["body"]
    assert (end["outcome"], end["release"], end["run"]) == ("deployed", report["release"], report["run"]), end
    assert end["hosts"] == ", ".join(sorted(orch_fleet)) and end["duration"] > 0, end
    assert ret.returncode == 0, report["comment"]
    revision = sample.git(upstream, "rev-parse", f"refs/heads/{ENV}")
    assert_fleet_serves(orch_fleet.values(), {h: (report["release"], revision) for h in orch_fleet})
    assert report["timings"]["canary"] >= 6, report["timings"]
    # the fleet's history: each host's last entry is this run's deploy, naming the run
    ret = salt_run.run("vumi.history", ENV, TARGET, limit=2)
    assert ret.returncode == 0 and set(ret.data) == set(orch_fleet), ret
    for rows in ret.data.values():
        assert (rows[0]["action"], rows[0]["release"], rows[0]["run"]) == ("deploy", report["release"], report["run"])
        assert rows[0]["subject"] == "Canary holds" and len(rows) == 2, rows
    print(salt_run.run("vumi.history", ENV, TARGET, limit=2, table=True).stdout)


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
