"""
Live progress: each stage of a deploy fires a Salt event, tag
``vumi/deploy/<env>/<stage>``, which a minion sends to its master's event bus::

    salt-run state.event 'vumi/deploy/*' pretty=True     # on the master, while
    salt 'web*' vumi.deploy staging                      # this runs

A real salt-master and one minion (pytest-salt-factories); salt-factories'
``event_listener`` receives every event of the master's bus. ``pytest -s``
prints the per-stage timings of the deploy.
"""

import json
import pathlib
import pwd
import time

import pytest
from saltfactories.utils import random_string

import make_repo as sample
from support import users
from support.fleet import ENVS, free_ports, kill_leftover_webapps, make_host, write_pillar
from support.helpers import clone_origin

pytestmark = pytest.mark.slow

ENV = "staging"
#: The stages of a deploy, in order; "health" only where the deploy has such a gate.
STAGES = ["layout", "fetch", "cut_release", "link_shared", "settings", "virtualenv", "hooks", "manifest",
          "health", "publish", "after_publish", "prune"]  # fmt: skip


@pytest.fixture(scope="module")
def host(salt_master, tmp_path_factory):
    """One deploy target: its own base_dir, repository and loopback ports, by pillar."""
    taken = {v for k, v in salt_master.config.items() if ("port" in k or k.startswith("tcp_")) and isinstance(v, int)}
    ports = free_ports(3, taken)
    host_id = random_string("web-events-", uppercase=False)
    host = make_host(tmp_path_factory.mktemp(host_id), host_id, {"staging": ports[:2], "production": ports[2:]})
    write_pillar(salt_master.pillar_dir, [host])
    return host


@pytest.fixture(scope="module")
def minion(salt_master, host):
    factory = salt_master.salt_minion_daemon(host.id)
    with factory.started():
        salt = salt_master.salt_cli(timeout=180)
        ret = salt.run("saltutil.sync_all", minion_tgt=host.id)
        assert ret.returncode == 0, ret
        try:
            yield factory
        finally:
            for env in ENVS:
                salt.run("vumi.stop_webapp_cluster", env, minion_tgt=host.id)
            assert not kill_leftover_webapps([host])


def deploy_events(event_listener, salt_master, after, count=None, timeout=30):
    """The ``vumi/deploy/staging/*`` events on the master's bus since ``after``, oldest first."""
    pattern = [(salt_master.id, f"vumi/deploy/{ENV}/*")]
    deadline = time.monotonic() + timeout
    while count is not None and time.monotonic() < deadline:  # the last ones may be on their way
        if len(event_listener.get_events(pattern, after_time=after)) >= count:
            break
        time.sleep(0.2)
    return sorted(event_listener.get_events(pattern, after_time=after), key=lambda e: e.stamp)


def test_one_event_per_stage_in_order_with_timings(salt_master, minion, host, event_listener):
    salt = salt_master.salt_cli(timeout=180)
    ret = salt.run("vumi.current", ENV, minion_tgt=host.id)  # warm: the first job loads the modules
    assert ret.returncode == 0, ret
    start = time.time()
    ret = salt.run("vumi.deploy", ENV, minion_tgt=host.id)
    assert ret.returncode == 0, ret
    result = ret.data
    # the history says who: the master job's user, its jid, this minion (Capistrano's revisions.log)
    lines = (host.env_root(ENV) / "history.log").read_text().splitlines()
    (entry,) = [json.loads(line) for line in lines if json.loads(line).get("release") == result["release"]]
    assert entry["minion"] == host.id and entry["branch"] == ENV and entry["user"], entry
    assert entry["jid"].isdigit() and len(entry["jid"]) == 20, entry
    timings = result["timings"]
    stages = [s for s in STAGES if s in timings]
    assert list(timings) == stages, timings  # every stage timed, in pipeline order
    assert set(STAGES) - set(stages) <= {"health"}, timings

    events = deploy_events(event_listener, salt_master, start, count=len(stages))
    tags = [e.tag for e in events]
    assert tags == [f"vumi/deploy/{ENV}/{stage}" for stage in stages], tags
    for event, stage in zip(events, stages):
        assert event.data["id"] == host.id, event.data  # sent by the minion, through the master
        data = event.data["data"]
        assert data["env"] == ENV and data["stage"] == stage, data
        assert data["outcome"] == "done", data
        assert isinstance(data["elapsed"], (int, float)) and data["elapsed"] >= 0, data
        # the event is fired right after the stage is timed
        assert abs(data["elapsed"] - timings[stage]) < 0.5, (data, timings[stage])
        if stage not in ("layout", "fetch"):  # known once the release is cut / the commit fetched
            assert data["release"] == result["release"], data
        if stage != "layout":
            assert data["revision"] == result["revision"] == host.revision(ENV), data
    assert sum(timings.values()) > 0

    print(f"\nvumi.deploy {ENV} on {host.id}: release {result['release']}, per-stage timings (s):")
    for event in events:
        print(f"  {event.stamp.isoformat(timespec='milliseconds')}  {event.tag:36} "
              f"elapsed {event.data['data']['elapsed']:7.3f}  {event.data['data']['outcome']}")  # fmt: skip
    print(f"  total {sum(timings.values()):.3f} s; deploy result timings: {json.dumps(timings)}")


def test_a_failing_stage_fires_its_failure_and_nothing_after(salt_master, minion, host, event_listener):
    salt = salt_master.salt_cli(timeout=180)
    start = time.time()
    ret = salt.run("vumi.deploy", ENV, "requirements=config/missing.pip", minion_tgt=host.id)
    assert ret.returncode != 0, ret
    assert "failed at stage 'virtualenv'" in str(ret.data), ret

    events = deploy_events(event_listener, salt_master, start, count=STAGES.index("virtualenv") + 1)
    time.sleep(1)  # time for a stray later event to arrive, then look again
    events = deploy_events(event_listener, salt_master, start)
    stages = [e.data["data"]["stage"] for e in events]
    assert stages == STAGES[: STAGES.index("virtualenv") + 1], stages
    *done, failed = events
    assert all(e.data["data"]["outcome"] == "done" for e in done), [e.data for e in done]
    assert failed.tag == f"vumi/deploy/{ENV}/virtualenv"
    assert failed.data["data"]["outcome"] == "failed", failed.data
    assert "config/missing.pip not found" in failed.data["data"]["error"], failed.data


def test_each_hook_line_is_announced_and_events_false_fires_none(salt_master, minion, host, event_listener):
    salt = salt_master.salt_cli(timeout=180)
    start = time.time()
    hooks = 'hooks={"before_publish": ["true", "echo second"]}'
    ret = salt.run("vumi.deploy", ENV, hooks, minion_tgt=host.id)
    assert ret.returncode == 0, ret
    events = deploy_events(event_listener, salt_master, start, count=len(STAGES) + 1)
    lines = [e.data["data"] for e in events if e.data["data"]["stage"] == "hooks" and "hook" in e.data["data"]]
    assert [(d["hook"], d["hook_stage"], d["index"], d["outcome"]) for d in lines] == [
        ("true", "before_publish", 0, "done"),
        ("echo second", "before_publish", 1, "done"),
    ], lines

    # events: false: the same deploy, and not one event on the bus
    start = time.time()
    ret = salt.run("vumi.deploy", ENV, "events=False", minion_tgt=host.id)
    assert ret.returncode == 0 and ret.data["timings"], ret
    time.sleep(2)  # time for a stray event to arrive
    assert deploy_events(event_listener, salt_master, start) == []


@pytest.fixture
def user_env(origin_repo):
    """A throw-away deploy user, its upstream clone and a base_dir it can reach (the minion drops to it)."""
    why_not = users.can_deploy_as_another_user()
    if why_not:
        pytest.skip(why_not)
    with users.reachable_dir("vumi-events-") as top, users.throwaway_user("vumitest-", top / "home") as user:
        repo = users.give(clone_origin(origin_repo, top / "upstream"), user)
        yield {"user": user.pw_name, "base_dir": str(top / "srv"), "repo_url": str(repo), "python": users.PYTHON}


@pytest.fixture(scope="module")
def origin_repo(tmp_path_factory):
    return sample.make_repo(tmp_path_factory.mktemp("events-origin") / "sampleapp")


def test_the_deploy_users_process_has_its_events_relayed(salt_master, minion, host, event_listener, user_env):
    """The stages run in a process of the deploy user's, which cannot reach the minion's bus: root relays them."""
    salt = salt_master.salt_cli(timeout=300)
    start = time.time()
    ret = salt.run("vumi.deploy", ENV, *(f"{k}={v}" for k, v in user_env.items()), minion_tgt=host.id)
    assert ret.returncode == 0, ret
    root = pathlib.Path(user_env["base_dir"]) / "vumi" / ENV
    assert (root / "current").lstat().st_uid == pwd.getpwnam(user_env["user"]).pw_uid  # the user deployed
    stages = list(ret.data["timings"])
    events = deploy_events(event_listener, salt_master, start, count=len(stages))
    assert [e.tag for e in events] == [f"vumi/deploy/{ENV}/{stage}" for stage in stages], [e.tag for e in events]
    assert all(e.data["id"] == host.id and e.data["data"]["outcome"] == "done" for e in events), [
        e.data for e in events
    ]
    assert events[-1].data["data"]["release"] == ret.data["release"]
