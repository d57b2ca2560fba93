"""
One deploy at a time per environment: an exclusive ``flock`` on ``.deploy.lock``, which
notes its holder and which the kernel releases when the holder dies.
"""

import contextlib
import fcntl
import getpass
import json
import logging
import os
import stat
import time

from salt.exceptions import CommandExecutionError

import vumi_errors
import vumi_files

log = logging.getLogger(__name__)

#: in a process of the deploy user's (vumi_privileges.as_user): the pid of the Salt process
#: it acts for, which the holder note names
SALT_PID = None


@contextlib.contextmanager
def flock(path, timeout, busy):
    """
    Hold an exclusive ``flock`` on ``path``, recording who holds it. The kernel
    releases it when its holder dies, so a crash never leaves a stale lock.
    After ``timeout`` seconds of waiting, raise ``busy(holder)``.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CommandExecutionError(f"the lock file {path} is not a regular file; remove it")
        vumi_files.own_like_parent(path, fd)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                    raise busy(holder or "unknown holder") from None
                time.sleep(0.05)
        # the Salt process of the deploy (salt-call's, the minion job's), which an operator sees;
        # as the deploy user, the process that acts for it too
        holder = {"pid": SALT_PID or os.getpid(), "user": getpass.getuser(), "since": vumi_files.now().isoformat()}
        if SALT_PID:
            holder["worker"] = os.getpid()
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError as exc:  # a full disk: the lock holds all the same, only its note is missing
            log.warning("could not note the holder of %s: %s", path, exc)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def deployed(cfg, paths):
    """The environment's folder is there (a link planted in its layout refused); else it is not deployed."""
    if not os.path.isdir(paths.root):
        raise CommandExecutionError(f"{cfg['environment']} is not deployed: {paths.root} does not exist")
    vumi_files.refuse_links(paths)


def deploy_lock(cfg, paths):
    """One deploy (or rollback, update, cleanup) at a time per environment."""
    deployed(cfg, paths)
    return flock(
        paths.lock,
        cfg["lock_timeout"],
        lambda holder: vumi_errors.Busy(
            f"another deploy of {cfg['environment']} holds the lock {paths.lock}: {holder}",
            lock=paths.lock,
            holder=holder,
        ),
    )
