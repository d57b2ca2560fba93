"""
Small file-system helpers: the deploy user, folders, atomic writes and links, ownership.
"""

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import os
import pwd
import re
import shutil
import stat

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)


def deploy_user(cfg):
    """
    The passwd entry of the deploy user Salt must act as (None: the user running Salt is
    the deploy user). The one place that says so: a user that does not exist, or one Salt
    cannot become (it does not run as root), is refused here, not passed over.
    """
    me = pwd.getpwuid(os.geteuid()).pw_name
    user = cfg["user"]  # validated: a non-empty name (an empty user is not root)
    if user == me:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SaltInvocationError(f"user {user!r} does not exist") from None
    if os.geteuid() != 0:
        raise SaltInvocationError(f"Salt runs as {me} and cannot act as user {user!r}")
    return entry


def runas_user(cfg):
    """The name of the user to run commands as (Salt's ``runas``), or None when it is the one running Salt."""
    entry = deploy_user(cfg)
    return entry.pw_name if entry else None


def chown(path, runas):
    if runas:
        entry = pwd.getpwnam(runas)
        os.lchown(path, entry.pw_uid, entry.pw_gid)


@contextlib.contextmanager
def making(path):
    """An error making the folder ``path`` said as the bundle says it (a path under a file, a folder Salt cannot write)."""
    try:
        yield
    except FileExistsError:
        raise
    except OSError as exc:
        raise CommandExecutionError(f"cannot make the folder {path}: {exc.strerror}") from None


def makedirs(path, runas, mode=0o755):
    if os.path.islink(path):
        raise CommandExecutionError(f"{path} is a symlink; refusing to use it")
    if not os.path.isdir(path):
        with making(path):
            os.makedirs(path, mode=mode)
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
    try:
        # O_NOFOLLOW: a link planted at the temporary name must not send root's write elsewhere
        # O_NONBLOCK: a FIFO planted there fails the open instead of blocking it
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
        with open(fd, "w", encoding="utf-8") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CommandExecutionError(f"{tmp} is not a regular file; refusing to write through it")
            fh.write(text)
        os.chmod(tmp, mode)
        chown(tmp, runas)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk: no empty temporary file left behind
        raise


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


def file_tail(path, lines=20, limit=256 << 10):
    """
    The last ``lines`` of a log (of its last ``limit`` bytes); when the first exception
    it reports is above them (a server's own traceback after its workers' can fill the
    end), that line first.
    """
    try:
        text = read_bounded(path, limit, tail=True)
    except (OSError, NotRegular):
        return ""
    if text is None:
        return ""
    text = text.decode("utf-8", "replace")
    tail = tail_lines(text, lines)
    first = _EXCEPTION_LINE.search(text)
    if first and first.group(0) not in tail:
        return f"(first error in the log: {first.group(0).strip()})\n{tail}"
    return tail


# --------------------------------------------------------------------------
# Reading a file someone else may control: never through a link, never a special
# file, never more than a bound (systemd's chase() + fd_verify_regular())
# --------------------------------------------------------------------------


class NotRegular(CommandExecutionError):
    """A file that is a link, a FIFO, a device or a folder, or larger than its bound: not read."""


#: O_NONBLOCK: a FIFO opens at once (and is then refused) instead of waiting for a writer;
#: O_NOCTTY: a terminal device never becomes the reader's controlling terminal
SAFE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_regular(path, limit=None, follow=False):
    """
    A descriptor of ``path`` checked to be a regular file (at most ``limit`` bytes when
    given); None when it does not exist. The caller closes it.
    ``follow``: a link is followed (for the deploy user's own reads, which reach no
    further than the user may).
    """
    try:
        fd = os.open(path, SAFE_READ & ~os.O_NOFOLLOW if follow else SAFE_READ)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegular(f"{path} is a symlink; not read") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegular(f"{path} is not a regular file; not read")
        if limit is not None and info.st_size > limit:
            raise NotRegular(f"{path} has {info.st_size} bytes, more than the {limit} it may have; not read")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path, limit, tail=False, follow=False):
    """
    The bytes of regular file ``path`` (None when it does not exist); larger than
    ``limit``: refused (``NotRegular``), or with ``tail``, its last ``limit`` bytes.
    """
    fd = open_regular(path, None if tail else limit, follow)
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - limit) if tail else 0
        chunks, left = [], limit
        while left > 0:
            chunk = os.pread(fd, min(left, 1 << 16), start)
            if not chunk:
                break
            chunks.append(chunk)
            start += len(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json(path, limit=64 << 10):
    """The JSON in a small file (None: absent; {}: a link, a special file, too large or not JSON)."""
    try:
        data = read_bounded(path, limit)
    except (OSError, NotRegular) as exc:
        log.warning("%s", exc)
        return {}
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}


def hash_file(digest, path, limit, follow=False):
    """Feed regular file ``path`` (no FIFO or device, at most ``limit`` bytes) into ``digest`` by chunks."""
    fd = open_regular(path, limit, follow=follow)
    if fd is None:
        raise FileNotFoundError(errno.ENOENT, "not found", path)
    try:
        inner = hashlib.sha256()
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            inner.update(chunk)
        digest.update(inner.digest())
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# A full disk: a small reserve, given up so that what frees space (or freezes
# deploys) can still write its few bytes
# --------------------------------------------------------------------------

RESERVE_BYTES = 1 << 20
#: what one write that found the disk full gets of the reserve
RESERVE_SLICE = 64 << 10


def keep_reserve(path):
    """Make (or fill up again) the reserve file, as whoever owns the tree; quietly not, on a full disk."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size >= RESERVE_BYTES:
            return
        os.pwrite(fd, b"\0" * (RESERVE_BYTES - info.st_size), info.st_size)  # written, not sparse: really held
        own_like_parent(path, fd)
    except OSError:
        return
    finally:
        os.close(fd)


def with_reserve(reserve, fn, *args, **kwargs):
    """
    ``fn(*args, **kwargs)``; when it finds the disk full, again once the reserve gave up
    a slice (several operations on a full disk each get one: a lock, a rollback, their records).
    """
    for _ in range(RESERVE_BYTES // RESERVE_SLICE + 1):
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or not _give_up_slice(reserve):
                raise
    return fn(*args, **kwargs)


def _give_up_slice(reserve):
    try:
        fd = os.open(reserve, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            return False
        os.ftruncate(fd, max(0, info.st_size - RESERVE_SLICE))
        log.warning("the disk of %s is full: its reserve gave up %s bytes", reserve, min(info.st_size, RESERVE_SLICE))
        return True
    finally:
        os.close(fd)
