"""
The host a test runs on is not the test's: no test installs a package, starts a host
service, writes a crontab, makes a user or touches a default path of the bundle
(``/var/praekelt``, ``/etc/supervisor``, ``/etc/nginx``, cron's folders). ``state()``
records all of that; ``changes(before, after)`` names what differs. ``tests/conftest.py``
compares the two around every test.

Recorded: every entry under the watched folders (type, mode, owner, and for files
their size and modification time: an entry made and removed again leaves no trace,
a file written does), the content of the account files, the package database, and
the pid files of host services under ``/run``.
"""

import contextlib
import hashlib
import os
import stat

#: folders no test may change: the bundle's defaults, supervisor's and nginx's own, cron's
TREES = [
    "/var/praekelt",
    "/etc/supervisor",
    "/etc/nginx",
    "/etc/cron.d",
    "/etc/cron.hourly",
    "/etc/cron.daily",
    "/etc/cron.weekly",
    "/etc/cron.monthly",
    "/var/spool/cron",
    "/etc/systemd/system",
]
#: files whose content no test may change: users, groups, root's crontab, the package database
FILES = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/crontab", "/var/lib/dpkg/status"]
#: the throw-away deploy users the attack tests make and remove (their fixture checks they are
#: gone): left out of the account files' record, since tests on other workers run meanwhile
THROWAWAY = (b"vumipriv-", b"vumitest-", b"vumi-pg-")
#: where their crontabs are: theirs are left out too (tests/functional/states/test_processes.py removes them)
CRONTABS = "/var/spool/cron/crontabs"
#: where a host service started by its init script leaves its pid file
RUN = "/run"
#: what a test may make in /run: sshd insists on its privilege separation folder (the
#: integration test of salt-ssh makes it, as Debian's package does at boot)
RUN_ALLOWED = {"/run/sshd"}
DEPTH = 6


def _entry(path, info):
    kind = stat.S_IFMT(info.st_mode)
    record = (kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    if stat.S_ISREG(info.st_mode):
        record += (info.st_size, info.st_mtime_ns)
    elif stat.S_ISLNK(info.st_mode):
        with contextlib.suppress(OSError):
            record += (os.readlink(path),)
    return record


def _tree(top, found, depth=DEPTH):
    with contextlib.suppress(OSError):
        found[top] = _entry(top, os.lstat(top))
    for root, dirs, files in os.walk(top):  # walks nothing when it is absent or not a folder
        for name in dirs + files:
            if root == CRONTABS and name.encode().startswith(THROWAWAY):
                continue
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                found[path] = _entry(path, os.lstat(path))
        if root[len(top) :].count(os.sep) + 1 >= depth:
            dirs[:] = []


def state(trees=None, files=None, run=RUN):
    """What the host holds that tests must leave alone: path -> what it is."""
    found = {}
    for top in TREES if trees is None else trees:
        _tree(top, found)
    for path in FILES if files is None else files:
        try:
            with open(path, "rb") as fh:
                lines = [line for line in fh.read().splitlines() if not line.startswith(THROWAWAY)]
            found[path] = ("content", hashlib.sha256(b"\n".join(lines)).hexdigest())
        except OSError:
            found[path] = None
    with contextlib.suppress(OSError):
        for entry in os.scandir(run):
            if entry.path not in RUN_ALLOWED and (entry.name.endswith(".pid") or entry.is_dir(follow_symlinks=False)):
                found[entry.path] = ("run",)
    return found


def changes(before, after):
    """The paths made, changed or removed from ``before`` to ``after``, each with how."""
    found = []
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            found.append(f"removed {path}")
        elif path not in before:
            found.append(f"made {path}")
        elif before[path] != after[path]:
            found.append(f"changed {path}")
    return found
