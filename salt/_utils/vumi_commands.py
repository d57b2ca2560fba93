"""
Shell lines of the operator (``execute``, ``managepy``) and of pillar (hooks), run
in a release as the deploy user with the release's environment, keeping at most
``OUTPUT_LIMIT`` bytes of each of stdout and stderr (the first and the last
parts, which say what ran and how it ended) however much the command prints.
"""

import contextlib
import os
import pwd
import selectors
import shutil
import signal
import subprocess
import time

import vumi_settings

#: bytes of stdout, and as many of stderr, that a result keeps
OUTPUT_LIMIT = 1 << 20
_HEAD = 64 << 10


class _Kept:
    """The head and the tail of a stream, and how much of it there was."""

    def __init__(self, limit):
        self.head, self.tail, self.total, self.limit = bytearray(), bytearray(), 0, limit

    def add(self, chunk):
        self.total += len(chunk)
        room = _HEAD - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        if len(self.tail) > self.limit - _HEAD:
            del self.tail[: len(self.tail) - (self.limit - _HEAD)]

    def text(self):
        kept = len(self.head) + len(self.tail)
        middle = f"\n[... {self.total - kept} bytes left out ...]\n".encode() if self.total > kept else b""
        return (bytes(self.head) + middle + bytes(self.tail)).decode("utf-8", "replace").rstrip("\n")


def as_user(cmd, runas, env=None):
    """
    An argument list and environment that run ``cmd`` as user ``runas`` through Salt's
    ``cmd.run_all`` without its ``runas``: that asks the user's login environment of
    Salt's own interpreter first, which logs an ERROR at every call where the user cannot
    run it (Salt in a venv under /root, a onedir install). util-linux's ``runuser``, with an
    environment of the user's own (home, name, a plain PATH) and ``env``; ``runas`` None,
    Salt's own user, or no ``runuser``: the command as it is, with Salt's ``runas``.
    Returns (argv, env, runas for Salt, clean_env for Salt).
    """
    env = dict(env or {})
    if not runas:
        return cmd, env, None, False
    entry = pwd.getpwnam(runas)
    runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if entry.pw_uid == os.geteuid() or os.geteuid() != 0 or runuser is None:
        return cmd, env, (None if entry.pw_uid == os.geteuid() else runas), False
    own = {"HOME": entry.pw_dir, "USER": runas, "LOGNAME": runas, "PATH": vumi_settings.PLAIN_PATH,
           "LANG": os.environ.get("LANG", "C.UTF-8"), "SHELL": entry.pw_shell or "/bin/sh"}  # fmt: skip
    return [runuser, "-u", runas, "--", *cmd], {**own, **env}, None, True


def run_shell(line, cwd, runas, env, limit=OUTPUT_LIMIT, timeout=None):
    """
    Run shell ``line`` (as ``runas``, a user name, or as Salt's own user when None):
    Salt's ``cmd.run_all`` result shape, with ``truncated`` listing the streams cut
    and ``timed_out`` whether ``timeout`` seconds passed first. The line runs in a
    session of its own (no terminal); when it ends, or at the time limit, its whole
    process group is killed: what it left in the background (``worker &``) neither
    holds its output open nor outlives it.
    """
    user = pwd.getpwnam(runas) if runas else None
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        ["/bin/sh", "-c", line], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        user=user.pw_uid if user else None, group=user.pw_gid if user else None,
        extra_groups=os.getgrouplist(user.pw_name, user.pw_gid) if user else None,
    )  # fmt: skip
    deadline = None if timeout is None else time.monotonic() + timeout
    kept = {proc.stdout: _Kept(limit), proc.stderr: _Kept(limit)}
    timed_out, ended = False, None
    with selectors.DefaultSelector() as selector:
        for stream in kept:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            exited = ended is None and _exited(proc)
            if ended is None and (exited or (deadline is not None and time.monotonic() >= deadline)):
                timed_out, ended = not exited, time.monotonic()
                _kill_group(proc)  # the line is done (or out of time): what it left behind goes
            if ended is not None and time.monotonic() > ended + 1:
                break  # a process of another session holds the pipes: not waited for (as_user reaps it)
            for key, _ in selector.select(timeout=0.2):
                chunk = os.read(key.fileobj.fileno(), 1 << 16)
                if chunk:
                    kept[key.fileobj].add(chunk)
                else:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
    for stream in kept:
        stream.close()
    _kill_group(proc)
    retcode = proc.wait()
    out, err = kept[proc.stdout], kept[proc.stderr]
    return {
        "retcode": retcode,
        "stdout": out.text(),
        "stderr": err.text(),
        "truncated": [name for name, k in (("stdout", out), ("stderr", err)) if k.total > k.limit],
        "timed_out": timed_out,
    }


def _exited(proc):
    """Whether the line's shell ended, without reaping it: its pid still names its group for the kill."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(proc):
    if proc.returncode is None:  # not reaped yet: the group is still the line's
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
