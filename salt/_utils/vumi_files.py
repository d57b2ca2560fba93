"""
Small file-system helpers: the deploy user, folders, atomic writes and links, ownership.
"""

import datetime
import logging
import os
import re
import pwd
import shutil

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)


def runas_user(cfg):
    """The user to run commands as, or None when it is the one running Salt."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    user = cfg["user"]  # validated: a non-empty name (an empty user is not root)
    if user == me:
        return None
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise SaltInvocationError(f"user {user!r} does not exist") from None
    if os.geteuid() != 0:
        raise SaltInvocationError(f"Salt runs as {me} and cannot act as user {user!r}")
    return user


def chown(path, runas):
    if runas:
        entry = pwd.getpwnam(runas)
        os.lchown(path, entry.pw_uid, entry.pw_gid)


def makedirs(path, runas, mode=0o755):
    if os.path.islink(path):
        raise CommandExecutionError(f"{path} is a symlink; refusing to use it")
    if not os.path.isdir(path):
        try:
            os.makedirs(path, mode=mode)
        except OSError as exc:  # a path under a regular file, a folder Salt cannot write
            raise CommandExecutionError(f"cannot make the folder {path}: {exc.strerror}") from None
        chown(path, runas)
        return True
    return False


def tail_lines(text, lines=15):
    return "\n".join((text or "").strip().splitlines()[-lines:])


def output_tail(res):
    """The last lines of a command's stderr, else its stdout (Salt's cmd/pip result dicts)."""
    if not isinstance(res, dict):
        return str(res)
    return tail_lines(res.get("stderr")) or tail_lines(res.get("stdout"))


def write_atomic(path, text, runas=None, mode=0o644):
    tmp = f"{path}.tmp-{os.getpid()}"
    # O_NOFOLLOW: a link planted at the temporary name must not send root's write elsewhere
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode), "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    chown(tmp, runas)
    os.replace(tmp, path)


def symlink_atomic(target, link):
    """Point ``link`` at ``target`` with one rename: there is never a moment without it."""
    if os.path.isdir(link) and not os.path.islink(link):
        raise CommandExecutionError(f"{link} is a directory, not a symlink; refusing to replace it")
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    own_like_parent(tmp)
    os.replace(tmp, link)


def own_like_parent(path, fd=None):
    """
    A file root makes inside the tree (links, the history, locks) belongs to the
    tree's owner, like everything the deploy makes as ``user``.
    """
    if os.geteuid() == 0:
        parent = os.stat(os.path.dirname(path))
        if fd is None:
            os.lchown(path, parent.st_uid, parent.st_gid)
        else:
            os.fchown(fd, parent.st_uid, parent.st_gid)


def refuse_links(paths):
    """
    The environment's folders must be real folders: a symlink planted in the tree
    (by anyone who can write there, e.g. its ``user``) would make Salt, often root,
    write, chown or delete wherever it points.
    """
    for path in (*paths.tree(), paths.failed, paths.repo, paths.history, paths.history_old, paths.lock):
        if os.path.islink(path):
            raise CommandExecutionError(f"{path} is a symlink; refusing to use it")


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def remove_tree(path):
    """
    Out of sight first (one rename), then deleted: a crash mid-way never leaves a
    half-deleted release or virtualenv that still looks complete.
    """
    trash = os.path.join(os.path.dirname(path), f".removing-{os.path.basename(path)}")
    if not os.path.basename(path).startswith(".removing-"):
        os.rename(path, trash)
        path = trash
    shutil.rmtree(path, ignore_errors=True)


#: the last line of a Python traceback: what went wrong, in one line
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*$", re.MULTILINE)


def file_tail(path, lines=20):
    """
    The last ``lines`` of a log; when the first exception it reports is above them (a
    server's own traceback after its workers' can fill the end), that line first.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return ""
    tail = tail_lines(text, lines)
    first = _EXCEPTION_LINE.search(text)
    if first and first.group(0) not in tail:
        return f"(first error in the log: {first.group(0).strip()})\n{tail}"
    return tail
