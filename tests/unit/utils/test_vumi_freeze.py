"""
``salt/_utils/vumi_freeze.py``: an operator's freeze (``vumi.lock``) and a fleet deploy's
hold, as files in a real environment folder under ``tmp_path``; what a deploy then meets.
"""

import datetime
import json
import os

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_errors
import vumi_freeze
import vumi_history

WHO = {"user": "alice", "minion": "web-1", "jid": "20261205000000000001"}


@pytest.fixture
def root(paths):
    os.makedirs(paths.root)
    return paths.root


def test_a_freeze_refuses_deploys_naming_who_and_why_until_lifted(cfg, paths, root):
    assert vumi_freeze.locked(paths) is None
    vumi_freeze.refuse(cfg, paths)  # not frozen: nothing said
    entry = vumi_freeze.lock(cfg, paths, "  incident 42  ", WHO)
    assert entry["reason"] == "incident 42" and entry["user"] == "alice" and entry["was"] is None
    with pytest.raises(vumi_errors.Locked, match=r"staging is locked by alice since .*: incident 42") as caught:
        vumi_freeze.refuse(cfg, paths)
    assert caught.value.facts == {"user": "alice", "since": entry["since"], "reason": "incident 42"}
    assert vumi_freeze.lock(cfg, paths, "still", WHO)["was"]["reason"] == "incident 42"
    assert vumi_freeze.unlock(cfg, paths, WHO)["was"]["reason"] == "still"
    vumi_freeze.refuse(cfg, paths)
    assert vumi_freeze.unlock(cfg, paths, WHO) == {"locked": False, "was": None}  # again: no error
    actions = [e["action"] for e in vumi_history.read_history(paths)]
    assert actions == ["lock", "lock", "unlock"]


def test_a_freeze_needs_a_reason_and_a_deployed_environment(cfg, paths):
    with pytest.raises(CommandExecutionError, match="staging is not deployed"):
        vumi_freeze.lock(cfg, paths, "why", WHO)
    os.makedirs(paths.root)
    for reason in ("", "   ", None, 3):
        with pytest.raises(SaltInvocationError, match="say why the environment is locked"):
            vumi_freeze.lock(cfg, paths, reason, WHO)
    assert not os.path.lexists(paths.frozen)


def test_a_lock_file_it_cannot_read_still_freezes_and_says_so(cfg, paths, root):
    with open(paths.frozen, "w", encoding="utf-8") as fh:
        fh.write("not json")
    assert "is there but unreadable (vumi.unlock removes it)" in vumi_freeze.locked(paths)["reason"]
    with pytest.raises(vumi_errors.Locked):
        vumi_freeze.refuse(cfg, paths)


def test_a_hold_lets_its_own_release_through_and_lapses_by_itself(cfg, paths, root):
    held = vumi_freeze.hold(cfg, paths, "20261205_120000", 600, WHO)
    assert vumi_freeze.held(paths) == held and held["jid"] == WHO["jid"]
    vumi_freeze.refuse(cfg, paths, "20261205_120000")  # the fleet deploy's own release
    with pytest.raises(vumi_errors.Held, match=r"held by the fleet deploy of release 20261205_120000") as caught:
        vumi_freeze.refuse(cfg, paths)
    assert caught.value.facts["release"] == "20261205_120000" and caught.value.facts["until"] == held["until"]
    assert vumi_freeze.unhold(cfg, paths, "20261205_130000") is None  # another release's: kept
    # an orchestration that died: its hold's time is up
    lapsed = dict(
        held, until=(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)).isoformat()
    )
    with open(paths.held, "w", encoding="utf-8") as fh:
        json.dump(lapsed, fh)
    assert vumi_freeze.held(paths) is None
    vumi_freeze.refuse(cfg, paths)
    assert vumi_freeze.unhold(cfg, paths)["release"] == "20261205_120000"
    assert not os.path.lexists(paths.held)


@pytest.mark.parametrize("seconds", [0, -5, 86401, True, "60", None])
def test_a_hold_is_bounded(cfg, paths, root, seconds):
    with pytest.raises(SaltInvocationError, match=f"invalid hold {seconds!r}"):
        vumi_freeze.hold(cfg, paths, "20261205_120000", seconds, WHO)
    assert not os.path.lexists(paths.held)
