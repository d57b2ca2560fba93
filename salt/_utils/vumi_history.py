"""
The environment's history log (``history.log``): who did what, when; read back to a bound.
"""

import contextlib
import errno
import getpass
import json
import logging
import os
import stat
import time

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
