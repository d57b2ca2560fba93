"""
The hold a fleet deploy (vumi.orch.deploy) puts on each host from its
prepare to its end, and the revert of a publish, on one host with real releases.
The orchestration itself runs against a real master in tests/integration/test_orchestrate.py.
"""

import datetime
import importlib.util
import json
import pathlib

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import make_repo as sample
import vumi_errors
from support.helpers import current_target, env_root

ENV = "staging"
REPO = pathlib.Path(__file__).resolve().parents[3]


def release_name(seconds_from_now=0):
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    return when.strftime("%Y%m%d_%H%M%S")


def test_a_held_environment_refuses_every_other_deploy_naming_the_fleet_deploy(vumi, loaders, repo, base_dir):
    first = vumi.deploy(ENV)
    sample.commit_file(repo, ENV, "NEWS", "the fleet's change\n", "change")
    release = release_name(2)
    prepared = vumi.prepare(ENV, release=release, hold=600)
    assert prepared["release"] == release and prepared["action"] == "prepare"
    held = vumi.held(ENV)
    assert held["release"] == release and held["user"], held
    refusal = rf"staging is held by the fleet deploy of release {release} .*vumi\.unhold staging lifts it"
    for attempt in (lambda: vumi.deploy(ENV), lambda: vumi.prepare(ENV), lambda: vumi.update(ENV),
                    lambda: vumi.publish(ENV, release)):  # fmt: skip
        with pytest.raises(vumi_errors.Held, match=refusal) as refused:
            attempt()
        assert refused.value.release == release and refused.value.until, refused.value.facts
    # to the fleet runner, the same as data, with retcode 1
    said = vumi.fleet_step("prepare", ENV, release=release_name(3))
    assert said["error"]["kind"] == "Held" and said["error"]["release"] == release, said
    assert loaders.context.get("retcode") == 1
    ret = loaders.states.vumi.deployed(ENV)
    assert ret["result"] is False and f"release {release}" in ret["comment"], ret
    assert vumi.check(ENV)["checks"]["lock"]["ok"] is False
    # the fleet deploy itself goes on: its publish renews the hold
    published = vumi.publish(ENV, release, hold=600)
    assert published["previous"] == first["release"] and current_target(base_dir) == f"releases/{release}"
    assert vumi.held(ENV)["release"] == release
    assert vumi.unhold(ENV, release="20000101_000000")["was"] is None  # another deploy's: left alone
    assert vumi.unhold(ENV, release=release)["was"]["release"] == release
    assert vumi.held(ENV) is None
    vumi.deploy(ENV)  # not held any more


def test_a_hold_lapses_on_its_own(vumi, repo, base_dir):
    vumi.prepare(ENV, release=release_name(), hold=600)
    held = env_root(base_dir) / "HELD"
    mark = json.loads(held.read_text())
    until = datetime.datetime.fromisoformat(mark["until"])
    assert until - datetime.datetime.fromisoformat(mark["since"]) == datetime.timedelta(seconds=600)
    assert vumi.held(ENV)["release"] == mark["release"]
    with pytest.raises(CommandExecutionError, match="is held by the fleet deploy"):
        vumi.deploy(ENV)
    # the orchestration died: its hold runs out (its time moved back instead of waiting 10 minutes)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    held.write_text(json.dumps(dict(mark, until=past.isoformat(timespec="seconds"))))
    assert vumi.held(ENV) is None
    assert vumi.deploy(ENV)["revision"] == sample.git(repo, "rev-parse", ENV)


def test_a_hold_needs_a_release_and_sane_seconds(vumi, base_dir):
    with pytest.raises(SaltInvocationError, match="name the release"):
        vumi.prepare(ENV, hold=60)
    for bad in (0, -1, True, "60", 10**6):
        with pytest.raises(SaltInvocationError, match=r"invalid hold"):
            vumi.prepare(ENV, release=release_name(), hold=bad)
    assert not (env_root(base_dir) / "HELD").exists()


def test_revert_undoes_a_publish_and_only_that(vumi, repo, base_dir):
    first = vumi.deploy(ENV)
    sample.commit_file(repo, ENV, "NEWS", "the fleet's change\n", "change")
    release = vumi.prepare(ENV, release=release_name(2))["release"]
    assert vumi.revert(ENV, release)["reverted"] is False  # prepared, not published: nothing to undo
    vumi.publish(ENV, release)
    res = vumi.revert(ENV, release)
    assert res["reverted"] is True and res["release"] == first["release"], res
    assert current_target(base_dir) == f"releases/{first['release']}"
    assert vumi.revert(ENV, release)["reverted"] is False  # once
    last = json.loads((env_root(base_dir) / "history.log").read_text().splitlines()[-1])
    assert last["action"] == "rollback" and last["previous"] == release


def test_once_on_names_the_host_that_runs_the_once_hooks(vumi, loaders, base_dir):
    hooks = {"before_publish": [{"run": "touch ran-once", "once": True}]}
    me = loaders.opts["id"]
    here = vumi.prepare(ENV, release=release_name(), once_on=me, hooks=hooks)
    assert here["hooks_skipped"] == [] and (pathlib.Path(here["path"]) / "vumi" / "ran-once").exists()
    other = vumi.prepare(ENV, release=release_name(2), once_on="web-2", hooks=hooks)
    assert (
        other["hooks_skipped"] == ["before_publish[0]"]
        and not (pathlib.Path(other["path"]) / "vumi" / "ran-once").exists()
    )


def test_the_grain_follows_deploy_update_rollback_publish_and_revert(vumi, loaders, repo):
    # salt/_grains/vumi.py, as the minion loads it, over this loader's cache
    spec = importlib.util.spec_from_file_location("vumi_grain_under_test", REPO / "salt" / "_grains" / "vumi.py")
    grain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grain)
    grain.__opts__ = loaders.opts

    def now():
        return grain.vumi()["vumi"][ENV]

    first = vumi.deploy(ENV)
    assert now() == {"release": first["release"], "revision": first["revision"]}
    sample.commit_file(repo, ENV, "NEWS", "a fix\n", "a fix")
    updated = vumi.update(ENV)
    assert now() == {"release": updated["release"], "revision": updated["new_revision"]}
    vumi.rollback(ENV, restart=False)
    assert now() == {"release": first["release"], "revision": first["revision"]}
    sample.commit_file(repo, ENV, "NEWS", "the fleet's change\n", "change")
    release = vumi.prepare(ENV, release=release_name(5))["release"]
    assert now()["release"] == first["release"]  # prepared is not current
    published = vumi.publish(ENV, release)
    assert now() == {"release": release, "revision": published["revision"]}
    vumi.revert(ENV, release)
    assert now() == {"release": first["release"], "revision": first["revision"]}
