"""
Privilege separation: what works inside an environment's tree runs as its deploy user.

``as_user`` runs a function in a child process that has dropped to the user's uid, gid
and groups, with a clean environment (the user's ``HOME``, ``USER``, ``LOGNAME``, a plain
``PATH``), and hands its result, or its error, back to the Salt job. Root keeps what
needs root: the root-owned ``<base_dir>`` and ``<base_dir>/<app>``, the environment's own
folder (made once, for the user), supervisor's program files, nginx's site, and talking
to supervisor.

The child speaks JSON lines on a pipe (never pickle: root must not run what a process
of the user's could write); the events it fires are relayed by the parent, since the
event bus is root's.
"""

import contextlib
import ctypes
import importlib
import json
import logging
import logging.handlers
import os
import pwd
import select
import signal
import stat
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_errors
import vumi_events
import vumi_files
import vumi_lock
import vumi_settings

log = logging.getLogger(__name__)


#: the errors that cross the pipe as themselves; anything else becomes a CommandExecutionError
ERRORS = {"SaltInvocationError": SaltInvocationError, "CommandExecutionError": CommandExecutionError}


def dropping(cfg):
    """The deploy user's passwd entry when this process must drop to it (``vumi_files.deploy_user``); else None."""
    return vumi_files.deploy_user(cfg)


def _drop(user, parent):
    os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    if os.getuid() != user.pw_uid or os.geteuid() != user.pw_uid:
        raise OSError(f"could not drop to {user.pw_name}")
    os.environ.clear()
    os.environ.update(
        HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name, PATH=vumi_settings.PLAIN_PATH, LANG="C.UTF-8"
    )
    with contextlib.suppress(OSError):
        os.chdir("/")
    # the job ends with the Salt process it acts for (salt-call killed, a minion job ended), and
    # takes what it started along (pip, git, a hook): a deploy nobody waits for must not go on
    # holding the lock or writing. Armed after the drop, which clears it
    signal.signal(signal.SIGTERM, _parent_died)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the signal was armed
        _parent_died()


def _parent_died(*_):
    reap()
    os._exit(1)  # pylint: disable=protected-access


def _error(exc):
    if isinstance(exc, vumi_errors.VumiError):
        return {"error": "VumiError", "vumi": vumi_errors.as_data(exc)}
    name = type(exc).__name__ if type(exc).__name__ in ERRORS else "CommandExecutionError"
    message = str(exc) if isinstance(exc, tuple(ERRORS.values())) else f"{type(exc).__name__}: {exc}"
    info = getattr(exc, "info", None)
    try:
        json.dumps(info)
    except (TypeError, ValueError):
        info = None
    return {"error": name, "message": message, "info": info}


#: what the child may use, loaded before it drops: Salt's or Python's own files may be
#: out of the user's reach (an interpreter under /root, a onedir install closed to others)
SALT_FUNCTIONS = ("cmd.run_all", "event.send", "virtualenv.create", "pip.install")
MODULES = ("_strptime", "encodings.idna", "tempfile", "glob", "shlex", "hashlib", "zipfile", "uuid")


def _warm(salt):
    for name in MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for name in SALT_FUNCTIONS if salt is not None else ():
        with contextlib.suppress(Exception):  # pylint: disable=broad-except
            # the loader loads it now
            salt[name]  # pylint: disable=pointless-statement


def _keep_logs_open():
    """
    Salt's log file (root's) stays written through the descriptor the child inherited: a
    WatchedFileHandler would stat its path, out of the user's reach, and fail to reopen it.
    """
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.handlers.WatchedFileHandler):
                handler.reopenIfNeeded = lambda: None


def _detach(keep):
    """
    In the child, before it runs anything of the user's: a session of its own, with no
    controlling terminal (sudo's use_pty, bubblewrap's --new-session: the user's code
    must not push keystrokes into the operator's terminal with TIOCSTI), and no
    descriptor of a terminal left open (standard streams are /dev/null).
    """
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                if os.isatty(fd):
                    os.close(fd)
    # orphans of what the user's code starts (a hook's "worker &", a double fork) become
    # this process's children, so that none outlives the job (_reap)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)


_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1


def children(pid):
    """The pids whose parent is ``pid`` (from /proc: the kernel's word)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(name))
    return found


def reap(rounds=50):
    """Kill and wait for every process this one started that is still running, and theirs."""
    for _ in range(rounds):
        left = children(os.getpid())
        if not left:
            return
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, 0)


#: how long root waits for a child that only reads (``vumi.current``, ``releases``, ``check``):
#: what it reads is bounded, so this is a backstop, not a schedule
READ_TIMEOUT = 60


def as_user(cfg, salt, opts, fn, *args, timeout=None, **kwargs):
    """
    ``fn(*args, **kwargs)`` as the deploy user (here, when nothing is to be dropped).
    ``timeout``: seconds root waits for the answer before it kills the child's session.
    """
    user = dropping(cfg)
    if user is None:
        return fn(*args, **kwargs)
    _warm(salt)
    events = bool(opts is not None and cfg.get("events") and vumi_events.event_bus_up(opts))
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns into Salt
        code = 0
        try:
            os.close(read_fd)
            _detach(write_fd)
            out = os.fdopen(write_fd, "w", encoding="utf-8")
            vumi_events.RELAY = (
                (lambda message: (out.write(json.dumps(message) + "\n"), out.flush()))
                if events
                else (lambda message: None)
            )
            vumi_lock.SALT_PID = os.getppid()
            try:
                _keep_logs_open()
                _drop(user, parent)
                message = {"result": fn(*args, **kwargs)}
            except BaseException as exc:  # pylint: disable=broad-except
                message = _error(exc)
            finally:
                reap()
            try:
                text = json.dumps(message)
            except (TypeError, ValueError) as exc:
                text = json.dumps(_error(CommandExecutionError(f"a result that is not plain data: {exc}")))
            out.write(text + "\n")
            out.flush()
        except BaseException:  # pylint: disable=broad-except
            code = 1
        finally:
            os._exit(code)  # pylint: disable=protected-access
    os.close(write_fd)
    try:
        last = _answer(salt, read_fd, pid, user, timeout)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if not isinstance(last, dict) or not ({"result", "error"} & set(last)):  # pylint: disable=unsupported-membership-test
        raise CommandExecutionError(
            f"the process of user {user.pw_name} ended without an answer (wait status {status}): was it killed?"
        )
    # a dict, checked above
    # pylint: disable=unsupported-membership-test,unsubscriptable-object
    if "error" in last:
        if isinstance(last.get("vumi"), dict):  # one of the bundle's own errors, with its class and facts
            raise vumi_errors.from_data(last["vumi"])
        error = ERRORS.get(last.get("error"), CommandExecutionError)
        if error is CommandExecutionError and last.get("info") is not None:
            raise CommandExecutionError(str(last.get("message")), info=last["info"])
        raise error(str(last.get("message")))
    return last["result"]


def _answer(salt, fd, pid, user, timeout):
    """The child's last message (events relayed on the way); its session killed after ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last, pending = None, b""
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                with contextlib.suppress(OSError):
                    target()
            os.waitpid(pid, 0)
            raise CommandExecutionError(
                f"the process of user {user.pw_name} did not answer within {timeout:g}s; it was killed"
            )
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return last
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line.decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(message, dict) and "event" in message:
                _relay(salt, message)
            else:
                last = message


def _relay(salt, message):
    tag, data = message.get("event"), message.get("data")
    if isinstance(tag, str) and tag.startswith("vumi/") and isinstance(data, dict):
        try:
            salt["event.send"](tag, data)
        except Exception as exc:  # pylint: disable=broad-except
            log.debug("could not relay the %s event: %s", tag, exc)


# --------------------------------------------------------------------------
# What root makes: the folders above an environment, and the environment's own
# --------------------------------------------------------------------------


def _root_dir(path, mode=0o755, gid=0):
    """``path`` a real folder of root's (group ``gid``), ``mode``: made, or an existing one (a link refused) taken back."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)  # a link: refused here
    try:
        info = os.fstat(fd)
        if info.st_uid != 0 or info.st_gid != gid:
            if info.st_uid != 0:
                log.warning("%s belonged to uid %s: given back to root (an environment's user must not own it)",
                            path, info.st_uid)  # fmt: skip
            os.fchown(fd, 0, gid)
        if stat.S_IMODE(info.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def ensure_log_dir(cfg, paths):
    """
    The folder supervisord (root) writes the webapps' logs in, ``<base_dir>/<app>/.logs/<env>``:
    root's, readable by the deploy user's group (0750), outside the user's tree, so that
    no link the user plants can send root's writes (or a rotation's renames) elsewhere.
    """
    if os.geteuid() != 0:
        os.makedirs(paths.webapp_logs, exist_ok=True)
        return
    _root_dir(paths.app_dir)
    _root_dir(os.path.dirname(paths.webapp_logs))
    gid = pwd.getpwnam(cfg["user"]).pw_gid if cfg["user"] != "root" else 0
    _root_dir(paths.webapp_logs, mode=0o750, gid=gid)


def ensure_env_root(cfg, paths, user):
    """
    ``<base_dir>`` and ``<base_dir>/<app>`` root's (0755); the environment's folder made
    once, for its user. Everything inside it, the user makes. Whether it made that folder.
    """
    for path in _parents(cfg["base_dir"]) + [cfg["base_dir"], paths.app_dir]:
        if not os.path.isdir(path) or os.path.islink(path):
            if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
                raise CommandExecutionError(f"{path} is not a folder (a link or a file); refusing")
        with vumi_files.making(path):
            if path in (cfg["base_dir"], paths.app_dir):
                _root_dir(path)
            elif not os.path.isdir(path):
                os.mkdir(path, 0o755)
    with vumi_files.making(paths.root):
        try:
            os.mkdir(paths.root, 0o755)
            made = True
        except FileExistsError:
            made = False
    fd = os.open(paths.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if made or info.st_uid == 0:  # a folder root made, now or for root before: the user's
            os.fchown(fd, user.pw_uid, user.pw_gid)
        elif info.st_uid != user.pw_uid:
            raise CommandExecutionError(
                f"{paths.root} belongs to uid {info.st_uid}, not to {user.pw_name}: another user's environment; refusing"
            )
    finally:
        os.close(fd)
    return made


def _parents(path):
    """The folders above ``path`` that do not exist yet, outermost first."""
    missing = []
    parent = os.path.dirname(path)
    while parent and parent != "/" and not os.path.exists(parent):
        missing.insert(0, parent)
        parent = os.path.dirname(parent)
    return missing
