"""
The environment's history log, its deploy lock, and a Salt event per stage.
"""

import contextlib
import errno
import fcntl
import getpass
import json
import logging
import os
import stat
import time

from salt.exceptions import CommandExecutionError

import vumi_files
import vumi_settings

log = logging.getLogger(__name__)


def who(opts, kwargs):
    """
    Who deployed, for the history: the Salt job's user (under a master, the one who
    ran ``salt``; masterless, the one behind ``sudo``, else this process's), its
    job id, and this minion.
    """
    user = kwargs.get("__pub_user") or os.environ.get("SUDO_USER") or getpass.getuser()
    found = {"user": user, "minion": opts.get("id")}
    jid = kwargs.get("__pub_jid") or opts.get("jid")
    if jid:
        found["jid"] = str(jid)
    return found


#: history.log is rotated to history.log.1 past this size; both are read
HISTORY_MAX = 1 << 20


def record(paths, action, **fields):
    """Append one line to the environment's history log (on a full disk, with the space its reserve frees)."""
    entry = {"time": vumi_files.now().isoformat(timespec="seconds"), "action": action, **fields}
    return vumi_files.with_reserve(paths.reserve, _append, paths, entry)


def _append(paths, entry):
    try:
        if os.lstat(paths.history).st_size > HISTORY_MAX and not os.path.islink(paths.history_old):
            os.replace(paths.history, paths.history_old)
    except FileNotFoundError:
        pass
    # failure reasons quote commands' output: not for every user of the host, never a URL's password
    fd = _open_history(paths.history)
    os.fchmod(fd, 0o640)
    vumi_files.own_like_parent(paths.history, fd)
    with open(fd, "a", encoding="utf-8") as fh:
        fh.write(vumi_settings.mask_credentials(json.dumps(entry, sort_keys=True)) + "\n")  # one write: whole lines
    return entry


_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _open_history(path):
    """
    The history log, opened to append: a regular file. Anything else there (a link, a
    FIFO that would block the open, a device) is moved aside and a new log begun.
    """
    try:
        fd = os.open(path, _APPEND, 0o640)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):
            raise
        fd = None
    if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    if fd is not None:
        os.close(fd)
    aside = f"{path}.not-a-log-{int(time.time())}"
    log.warning("%s is not a regular file: moved to %s, a new history begun", path, aside)
    os.replace(path, aside)
    return os.open(path, _APPEND | os.O_EXCL, 0o640)


#: what is read of each part of the history: it is rotated at HISTORY_MAX, so a larger
#: part was not written here; its last lines are read, never the whole of it
HISTORY_READ = 4 * HISTORY_MAX


def read_history(paths):
    """Every entry, oldest first: the rotated part, then the current file (each a regular file, its end)."""
    entries = []
    for path in (paths.history_old, paths.history):
        try:
            data = vumi_files.read_bounded(path, HISTORY_READ, tail=True)
        except (OSError, vumi_files.NotRegular) as exc:
            log.warning("history not read: %s", exc)
            continue
        lines = (data or b"").split(b"\n")
        if data and len(data) == HISTORY_READ:
            lines = lines[1:]  # the first is cut
        for line in lines:
            if line.strip():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line.decode("utf-8", "replace"))
                    if isinstance(entry, dict):
                        entries.append(entry)
    return entries


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


def deploy_lock(cfg, paths):
    """One deploy (or rollback, update, cleanup) at a time per environment."""
    if not os.path.isdir(paths.root):
        raise CommandExecutionError(f"{cfg['environment']} is not deployed: {paths.root} does not exist")
    vumi_files.refuse_links(paths)
    return flock(
        paths.lock,
        cfg["lock_timeout"],
        lambda holder: CommandExecutionError(
            f"another deploy of {cfg['environment']} holds the lock {paths.lock}: {holder}"
        ),
    )


def event_bus_up(opts):
    """
    Whether an event would reach anyone: under a master, yes; masterless only
    when a minion daemon's event bus runs (otherwise each event waits a second
    for a socket that is not there).
    """
    local = opts.get("local") or opts.get("file_client") == "local"
    if not local or opts.get("use_master_when_local") or opts.get("ipc_mode") == "tcp":
        return True
    sock_dir = opts.get("sock_dir") or ""
    return os.path.isdir(sock_dir) and any(
        n.startswith("minion_event_") and n.endswith("_pull.ipc") for n in os.listdir(sock_dir)
    )


#: in a process of the deploy user's (vumi_privileges.as_user): where events go instead of the bus,
#: which is root's; the parent fires them
RELAY = None
#: ...and the pid of the Salt process it acts for (the lock's holder note names it)
SALT_PID = None


def event(d, stage, started, outcome, **extra):
    """Live progress: ``salt-run state.event`` (or the minion's bus, masterless) shows each stage."""
    if RELAY is not None:
        d.events = d.cfg["events"]
    elif d.events is None:
        d.events = d.cfg["events"] and event_bus_up(d.opts)
    if not d.events:
        return
    data = {"env": d.cfg["environment"], "stage": stage, "release": d.release, "revision": d.sha,
            "elapsed": round(time.monotonic() - started, 3), "outcome": outcome, **extra}  # fmt: skip
    if RELAY is not None:
        RELAY({"event": f"vumi/deploy/{d.cfg['environment']}/{stage}", "data": data})
        return
    try:
        d.salt["event.send"](f"vumi/deploy/{d.cfg['environment']}/{stage}", data)
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("could not fire the %s event: %s", stage, exc)  # progress is best effort
