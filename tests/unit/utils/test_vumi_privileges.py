"""
``salt/_utils/vumi_privileges.py``: ``as_user`` runs a function as the deploy user (a
throw-away user this module makes) in a child of its own, and hands back its answer or
its error, typed. The child keeps nothing of root's: not its ids, its environment or its
terminal; it is killed, with what it started, when root stops waiting.
"""

import os
import signal
import time

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_errors
import vumi_privileges
from support import users

pytestmark = pytest.mark.skipif(bool(users.can_deploy_as_another_user()), reason="needs root and useradd")


@pytest.fixture(scope="module")
def user():
    with users.throwaway_user() as entry:
        yield entry


@pytest.fixture
def as_user(cfg, user):
    def run(fn, *args, **kwargs):
        return vumi_privileges.as_user(dict(cfg, user=user.pw_name), None, None, fn, *args, **kwargs)

    return run


def test_the_function_runs_as_the_user_in_a_session_of_its_own(as_user, user, monkeypatch):
    monkeypatch.setenv("ROOTS_SECRET", "x")

    def who():
        return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
                "sid_is_own": os.getsid(0) == os.getpid(), "pid": os.getpid(), "env": dict(os.environ),
                "tty": os.isatty(0) or os.isatty(1) or os.isatty(2)}  # fmt: skip

    seen = as_user(who)
    assert (seen["uid"], seen["euid"], seen["gid"]) == (user.pw_uid, user.pw_uid, user.pw_gid)
    assert 0 not in seen["groups"] and seen["pid"] != os.getpid()
    assert seen["sid_is_own"] and not seen["tty"]
    assert "ROOTS_SECRET" not in seen["env"] and seen["env"]["USER"] == user.pw_name


def test_the_deploy_user_running_salt_is_not_dropped_to(cfg):
    # Salt runs as the deploy user already: the function runs here, in this process
    assert vumi_privileges.as_user(cfg, None, None, os.getpid) == os.getpid()


def test_errors_cross_back_as_their_kind(as_user):
    def held():
        raise vumi_errors.Held("staging is held", release="20261205_120000", until="later")

    with pytest.raises(vumi_errors.Held, match="staging is held") as caught:
        as_user(held)
    assert caught.value.facts == {"release": "20261205_120000", "until": "later"}

    def bad_input():
        raise SaltInvocationError("invalid port 'x'")

    with pytest.raises(SaltInvocationError, match="invalid port 'x'"):
        as_user(bad_input)

    def bug():
        raise ValueError("unexpected")

    with pytest.raises(CommandExecutionError, match="ValueError: unexpected"):
        as_user(bug)


def test_a_child_that_does_not_answer_in_time_is_killed_with_what_it_started(as_user, user):
    with users.reachable_dir() as folder:
        os.chown(folder, user.pw_uid, user.pw_gid)
        sleeper = _killed_at_timeout(as_user, folder / "sleeper.pid")
    for _ in range(50):  # killed with the child's session: gone, or a zombie nobody waits for
        try:
            with open(f"/proc/{sleeper}/stat", encoding="utf-8") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        os.kill(sleeper, signal.SIGKILL)
        pytest.fail(f"the child's sleep {sleeper} outlived it")


def _killed_at_timeout(as_user, pidfile):

    def hang():
        pid = os.spawnlp(os.P_NOWAIT, "sleep", "sleep", "300")
        pidfile.write_text(str(pid))
        time.sleep(300)

    began = time.monotonic()
    with pytest.raises(CommandExecutionError, match=r"did not answer within 2s; it was killed"):
        as_user(hang, timeout=2)
    assert time.monotonic() - began < 10
    return int(pidfile.read_text())


def test_a_child_that_dies_without_answering_is_said_to_have(as_user):
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(CommandExecutionError, match=r"ended without an answer \(wait status 9\): was it killed"):
        as_user(die)
