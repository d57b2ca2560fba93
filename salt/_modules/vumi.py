"""
Deploy a Python web application from git into timestamped releases.

The Salt equivalent of the Fabric deploy that Vumi's operators used: each git
branch is an environment with its own tree under ``<base_dir>/<app>/<env>``::

    releases/<YYYYmmdd_HHMMSS>/     one release: <app>/ (the code), ve, REVISION, release.json
    shared/logs/  shared/tmp/cache/pip/  shared/tmp/pids/  shared/repositories/<app>/
    shared/virtualenvs/<hash>/      virtualenvs, shared by releases with the same requirements
    current -> releases/<latest>    what the webapp runs from
    history.log                     one JSON line per deploy, update, rollback and failure

A branch with ``/`` in its name (``topics/foo``) lives in the folder
``topics~foo``: git forbids ``~`` in branch names, so the mapping is reversible.

Settings come from pillar ``vumi`` (defaults) and ``vumi:environments:<env>``
(overrides), then keyword arguments; :py:func:`settings` shows the result.

:depends: git
"""

import contextlib
import datetime
import fcntl
import getpass
import hashlib
import http.client
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import salt.utils.dictupdate
import salt.utils.path
from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "vumi"

#: Defaults of every setting; ``salt/vumi/defaults.yaml`` mirrors them for the SLS.
DEFAULTS = {
    "base_dir": "/var/praekelt",
    "app": "vumi",
    "repo_url": "http://github.com/praekelt/vumi.git",
    "branch": None,  # the environment's name
    "revision": None,  # optional pin: commit, tag
    "requirements": "config/requirements.pip",
    "user": "root",
    "keep_releases": 5,
    "keep_failed": 3,
    "ports": [8000],
    "host": "127.0.0.1",
    "python": None,  # interpreter for virtualenvs; None: the one running Salt
    "reuse_virtualenvs": True,
    "shared_dirs": ["logs", "tmp"],
    "settings_module": "environments.{env}",
    "webapp_command": (
        "{venv}/bin/python manage.py runserver {host}:{port} --settings={settings}"
    ),
    "start_timeout": 30,
    "stop_timeout": 10,
    "stop_signal": "SIGTERM",  # asks the webapp to stop; SIGKILL follows after stop_timeout
    "lock_timeout": 300,
    # the switch to a new release waits for one webapp of it, on a spare port, to answer;
    # None: off here, and on in the SLS when the environment has ports
    "health_check": None,
    "health_path": "/health",  # answers 2xx/3xx to GET; None: a TCP connect is enough
    "health_timeout": 10,  # seconds the health request may take
    "settings": None,  # a mapping rendered into every release as a Python settings file
    "settings_path": "environments/{env}.py",  # where, in the code folder
    "settings_extends": None,  # a module the rendered file imports first, e.g. environments.default
    "events": True,  # fire a Salt event per deploy stage: vumi/deploy/<env>/<stage>
    "environments": {},
}

_NAME_PART = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_BRANCH_RE = re.compile(rf"^{_NAME_PART}(/{_NAME_PART})*$")
_APP_RE = re.compile(rf"^{_NAME_PART}$")
_RELEASE_RE = re.compile(r"^\d{8}_\d{6}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_RELEASE_FORMAT = "%Y%m%d_%H%M%S"
_MANIFEST = "release.json"
_VENV_MARKER = ".vumi-complete"
_MAX_PORTS = 64


def __virtual__():
    if not salt.utils.path.which("git"):
        return (False, "the vumi module needs the git binary on PATH")
    return __virtualname__


# --------------------------------------------------------------------------
# Validation and settings: read in one place
# --------------------------------------------------------------------------


def _check_name(value, what, pattern=_BRANCH_RE):
    if not isinstance(value, str) or not value:
        raise SaltInvocationError(f"{what} must be a non-empty string, not {value!r}")
    if (
        len(value) > 200
        or ".." in value
        or value.endswith((".lock", "."))
        or not pattern.match(value)
    ):
        raise SaltInvocationError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_', '-' and '/' "
            "between parts; no '..', no leading '/' or '-', no spaces or shell characters"
        )
    return value


def env_dirname(env):
    """
    The folder name of an environment: ``/`` becomes ``~`` (reversible, since
    git forbids ``~`` in branch names).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.env_dirname topics/foo
    """
    return _check_name(env, "environment").replace("/", "~")


def _port(value):
    if isinstance(value, bool):
        raise SaltInvocationError(f"invalid port {value!r}: must be an integer 1-65535")
    try:
        port = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise SaltInvocationError(
            f"invalid port {value!r}: must be an integer 1-65535"
        ) from None
    if not 1 <= port <= 65535 or (isinstance(value, str) and not value.strip().isdigit()):
        raise SaltInvocationError(f"invalid port {value!r}: must be an integer 1-65535")
    return port


def _ports(values):
    """Ports as given on the CLI: ints, numeric strings, lists, or '8000,8001'."""
    flat = []
    for value in values:
        if isinstance(value, (list, tuple)):
            flat.extend(value)
        elif isinstance(value, str) and "," in value:
            flat.extend(value.split(","))
        else:
            flat.append(value)
    if len(flat) > _MAX_PORTS:
        raise SaltInvocationError(f"too many ports ({len(flat)}); at most {_MAX_PORTS}")
    ports = []
    for value in flat:
        port = _port(value)
        if port not in ports:
            ports.append(port)
    return ports


def _relpath(value, what):
    if (
        not isinstance(value, str)
        or not value
        or value.startswith("/")
        or ".." in value.split("/")
        or "\0" in value
    ):
        raise SaltInvocationError(f"invalid {what} {value!r}: must be a relative path inside the code")
    return value


def _validate(cfg):
    base = cfg["base_dir"]
    if not isinstance(base, str) or not os.path.isabs(base) or os.path.normpath(base) in ("/",):
        raise SaltInvocationError(f"invalid base_dir {base!r}: must be an absolute path other than /")
    if "\0" in base or ".." in base.split("/"):
        raise SaltInvocationError(f"invalid base_dir {base!r}")
    cfg["base_dir"] = os.path.normpath(base)
    _check_name(cfg["app"], "app", _APP_RE)
    _check_name(cfg["branch"], "branch")
    if cfg["revision"] is not None:
        cfg["revision"] = _check_name(str(cfg["revision"]), "revision", _REVISION_RE)
    if not isinstance(cfg["repo_url"], str) or not cfg["repo_url"] or cfg["repo_url"].startswith("-"):
        raise SaltInvocationError(f"invalid repo_url {cfg['repo_url']!r}")
    _relpath(cfg["requirements"], "requirements")
    if cfg["settings"] is not None and not isinstance(cfg["settings"], dict):
        raise SaltInvocationError(f"invalid settings {cfg['settings']!r}: must be a mapping")
    for key in cfg["settings"] or {}:
        if not isinstance(key, str) or not key.isidentifier():
            raise SaltInvocationError(f"invalid settings key {key!r}: must be a Python identifier")
        _py_literal(cfg["settings"][key], key)  # a value the file cannot hold fails before any deploy
    if cfg["settings_extends"] is not None and not re.match(r"^[A-Za-z_][\w.]*$", str(cfg["settings_extends"])):
        raise SaltInvocationError(f"invalid settings_extends {cfg['settings_extends']!r}: must be a module name")
    _relpath(cfg["settings_path"].format(env=_env_module(cfg["env"])), "settings_path")
    for name in cfg["shared_dirs"]:
        _check_name(name, "shared dir", _APP_RE)
    for key in ("keep_releases", "keep_failed"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise SaltInvocationError(f"invalid {key} {cfg[key]!r}: must be an integer >= 1")
    for key in ("start_timeout", "stop_timeout", "lock_timeout", "health_timeout"):
        try:
            cfg[key] = float(cfg[key])
        except (TypeError, ValueError):
            raise SaltInvocationError(f"invalid {key} {cfg[key]!r}: must be a number") from None
        if not 0 <= cfg[key] < float("inf"):  # nan too: a deadline that never comes
            raise SaltInvocationError(f"invalid {key} {cfg[key]!r}: must be a number of seconds >= 0")
    if cfg["health_check"] is not None and not isinstance(cfg["health_check"], bool):
        raise SaltInvocationError(f"invalid health_check {cfg['health_check']!r}: must be true, false or null")
    path = cfg["health_path"]
    if path is not None and (not isinstance(path, str) or not re.match(r"^/[\x21-\x7e]{0,1000}$", path)):
        raise SaltInvocationError(
            f"invalid health_path {path!r}: must be a URL path starting with '/' (no spaces), or null"
        )
    ports = cfg["ports"]
    cfg["ports"] = _ports(ports if isinstance(ports, (list, tuple)) else [ports])
    cfg["stop_signal"] = _signal_name(cfg["stop_signal"])
    return cfg


def _signal_name(value):
    """A signal's canonical name ('SIGTERM') from 'SIGTERM', 'term' or 15."""
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return signal.Signals(value).name
        name = value.strip().upper()
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"].name
    except (AttributeError, KeyError, ValueError):
        raise SaltInvocationError(
            f"invalid stop_signal {value!r}: must name a signal, like SIGTERM or SIGINT"
        ) from None


def settings(branch, vumi_pillar=None, **kwargs):
    """
    The settings of an environment: ``vumi`` pillar (and minion options) merged
    onto the defaults, then ``vumi:environments:<branch>``, then keyword
    arguments.

    branch
        The environment (by default also the git branch).
    vumi_pillar
        A ``vumi`` pillar mapping to read instead of this host's pillar. Under
        salt-ssh a module called on its own sees no pillar, so the bundle's
        wrapper (``salt/_wrapper/vumi.py``) passes the controller's; every
        function accepts it.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.settings staging
    """
    env = _check_name(branch, "environment")
    overrides = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise SaltInvocationError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    cfg = salt.utils.dictupdate.merge(
        {k: v for k, v in DEFAULTS.items() if k != "environments"}, {}, merge_lists=False
    )
    environments = {}
    pillar = __pillar__.get("vumi") if vumi_pillar is None else vumi_pillar
    for source in (__opts__.get("vumi"), pillar):  # pillar wins
        if isinstance(source, dict):
            environments.update(source.get("environments") or {})
            cfg.update({k: v for k, v in source.items() if k in DEFAULTS and k != "environments"})
    own = environments.get(env) or {}
    cfg.update({k: v for k, v in own.items() if k in DEFAULTS and k != "environments"})
    cfg.update({k: v for k, v in overrides.items() if k != "environments"})
    cfg["env"] = env
    cfg["branch"] = cfg["branch"] or env
    return _validate(cfg)


class _Paths:
    """Every path of one environment, computed here and nowhere else."""

    def __init__(self, cfg):
        self.app = cfg["app"]
        self.app_dir = os.path.join(cfg["base_dir"], cfg["app"])
        self.root = os.path.join(self.app_dir, env_dirname(cfg["env"]))
        self.releases = os.path.join(self.root, "releases")
        self.failed = os.path.join(self.root, "failed")
        self.shared = os.path.join(self.root, "shared")
        self.logs = os.path.join(self.shared, "logs")
        self.tmp = os.path.join(self.shared, "tmp")
        self.pip_cache = os.path.join(self.tmp, "cache", "pip")
        self.pids = os.path.join(self.tmp, "pids")
        self.repositories = os.path.join(self.shared, "repositories")
        self.repo = os.path.join(self.repositories, cfg["app"])
        self.virtualenvs = os.path.join(self.shared, "virtualenvs")
        self.current = os.path.join(self.root, "current")
        self.history = os.path.join(self.root, "history.log")
        self.lock = os.path.join(self.root, ".deploy.lock")

    def tree(self):
        """The folders ``layout`` makes, parents first."""
        return [
            self.root, self.releases, self.shared, self.logs, self.repositories,
            self.tmp, os.path.join(self.tmp, "cache"), self.pip_cache, self.pids,
            self.virtualenvs,
        ]  # fmt: skip

    def release(self, name):
        _check_name(name, "release", _RELEASE_RE)
        return os.path.join(self.releases, name)

    def code(self, name):
        return os.path.join(self.release(name), self.app)

    def venv(self, name):
        return os.path.join(self.release(name), "ve")

    def manifest(self, name):
        return os.path.join(self.release(name), _MANIFEST)

    def pidfile(self, port):
        return os.path.join(self.pids, f"webapp.{port}.pid")

    def logfile(self, port):
        return os.path.join(self.logs, f"webapp.{port}.log")


def paths(branch, **kwargs):
    """
    The folders and files of an environment: ``tree`` lists the folders
    ``layout`` makes; ``planted`` lists those of them (and ``failed``, the
    cached repository) that are symlinks, which nothing here will follow.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.paths topics/foo
    """
    found = _Paths(settings(branch, **kwargs))
    tree = found.tree()
    planted = [p for p in tree + [found.failed, found.repo] if os.path.islink(p)]
    return dict(vars(found), tree=tree, planted=planted)


def _context(branch, kwargs):
    cfg = settings(branch, **kwargs)
    return cfg, _Paths(cfg)


# --------------------------------------------------------------------------
# Small helpers: users, commands, files
# --------------------------------------------------------------------------


def _runas(cfg):
    """The user to run commands as, or None when it is the one running Salt."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    user = cfg["user"] or me
    if user == me:
        return None
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise SaltInvocationError(f"user {user!r} does not exist") from None
    if os.geteuid() != 0:
        raise SaltInvocationError(f"Salt runs as {me} and cannot act as user {user!r}")
    return user


def _chown(path, runas):
    if runas:
        entry = pwd.getpwnam(runas)
        os.lchown(path, entry.pw_uid, entry.pw_gid)


def _makedirs(path, runas, mode=0o755):
    if os.path.islink(path):
        raise CommandExecutionError(f"{path} is a symlink; refusing to use it")
    if not os.path.isdir(path):
        os.makedirs(path, mode=mode)
        _chown(path, runas)
        return True
    return False


def _tail(text, lines=15):
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _output_tail(res):
    """The last lines of a command's stderr, else its stdout (Salt's cmd/pip result dicts)."""
    if not isinstance(res, dict):
        return str(res)
    return _tail(res.get("stderr")) or _tail(res.get("stdout"))


def _run(cmd, what, cwd=None, runas=None, env=None):
    """Run an argument list with Salt's cmd.run_all; raise with its output's tail on failure."""
    env = dict(env or {}, GIT_TERMINAL_PROMPT="0")
    res = __salt__["cmd.run_all"](
        cmd, cwd=cwd, runas=runas, env=env, python_shell=False, output_loglevel="quiet",
        ignore_retcode=True,  # a failure raises below; a probe that fails must not fail the job
    )
    if res["retcode"] != 0:
        raise CommandExecutionError(f"{what} failed (exit {res['retcode']}): {_output_tail(res)}")
    return res["stdout"].strip()


def _git(args, what, cwd=None, runas=None):
    return _run(["git", *args], what, cwd=cwd, runas=runas)


def _write_atomic(path, text, runas=None, mode=0o644):
    tmp = f"{path}.tmp-{os.getpid()}"
    # O_NOFOLLOW: a link planted at the temporary name must not send root's write elsewhere
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode), "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    _chown(tmp, runas)
    os.replace(tmp, path)


def _symlink_atomic(target, link):
    """Point ``link`` at ``target`` with one rename: there is never a moment without it."""
    if os.path.isdir(link) and not os.path.islink(link):
        raise CommandExecutionError(f"{link} is a directory, not a symlink; refusing to replace it")
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    _own_like_parent(tmp)
    os.replace(tmp, link)


def _own_like_parent(path, fd=None):
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


def _refuse_links(paths):
    """
    The environment's folders must be real folders: a symlink planted in the tree
    (by anyone who can write there, e.g. its ``user``) would make Salt, often root,
    write, chown or delete wherever it points.
    """
    for path in (*paths.tree(), paths.failed, paths.repo, paths.history, paths.lock):
        if os.path.islink(path):
            raise CommandExecutionError(f"{path} is a symlink; refusing to use it")


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _record(paths, action, **fields):
    """Append one line to the environment's history log."""
    entry = {"time": _now().isoformat(timespec="seconds"), "action": action, **fields}
    fd = os.open(paths.history, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    _own_like_parent(paths.history, fd)
    with open(fd, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")  # one write: a crash leaves whole lines
    return entry


def _history(paths):
    if not os.path.isfile(paths.history):
        return []
    entries = []
    with open(paths.history, encoding="utf-8") as fh:
        for line in fh:
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    return entries


@contextlib.contextmanager
def _flock(path, timeout, busy):
    """
    Hold an exclusive ``flock`` on ``path``, recording who holds it. The kernel
    releases it when its holder dies, so a crash never leaves a stale lock.
    After ``timeout`` seconds of waiting, raise ``busy(holder)``.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        _own_like_parent(path, fd)
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
        holder = {"pid": os.getpid(), "user": getpass.getuser(), "since": _now().isoformat()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _deploy_lock(cfg, paths):
    """One deploy (or rollback, update, cleanup) at a time per environment."""
    if not os.path.isdir(paths.root):
        raise CommandExecutionError(f"{cfg['env']} is not deployed: {paths.root} does not exist")
    _refuse_links(paths)
    return _flock(
        paths.lock,
        cfg["lock_timeout"],
        lambda holder: CommandExecutionError(
            f"another deploy of {cfg['env']} holds the lock {paths.lock}: {holder}"
        ),
    )


# --------------------------------------------------------------------------
# Releases: reading what is there
# --------------------------------------------------------------------------


def _read_manifest(paths, name):
    try:
        with open(paths.manifest(name), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _current_name(paths):
    if os.path.isdir(paths.current) and not os.path.islink(paths.current):
        raise CommandExecutionError(f"{paths.current} is a directory, not a symlink; refusing")
    if not os.path.islink(paths.current):
        return None
    target = os.readlink(paths.current)
    name = os.path.basename(target.rstrip("/"))
    expected = os.path.join("releases", name)
    if target not in (expected, os.path.join(paths.root, expected)) or not _RELEASE_RE.match(name):
        raise CommandExecutionError(f"{paths.current} points outside the releases: {target}")
    return name


def _release_names(paths):
    if not os.path.isdir(paths.releases):
        return []
    return sorted(n for n in os.listdir(paths.releases) if _RELEASE_RE.match(n))


def _venv_ok(venv):
    return os.path.isfile(os.path.join(venv, _VENV_MARKER)) and os.access(
        os.path.join(venv, "bin", "python"), os.X_OK
    )


def _release_info(paths, name, current_name):
    manifest = _read_manifest(paths, name)
    info = {
        "release": name,
        "path": paths.release(name),
        "current": name == current_name,
        "state": "complete" if manifest else "incomplete",
    }
    if manifest:
        info.update({k: manifest.get(k) for k in ("revision", "branch", "deployed_at", "requirements_hash")})
    return info


def releases(branch, **kwargs):
    """
    The releases of an environment, oldest first, with their revision, time
    and state (``complete``, ``incomplete``) and which one is current.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.releases staging
    """
    _, paths = _context(branch, kwargs)
    current_name = _current_name(paths)
    return [_release_info(paths, name, current_name) for name in _release_names(paths)]


def current(branch, **kwargs):
    """
    The current release of an environment (``None`` when nothing is deployed)
    with its manifest, whether its virtualenv is intact and whether its
    requirements changed since the virtualenv was built.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.current staging
    """
    cfg, paths = _context(branch, kwargs)
    name = _current_name(paths)
    if name is None:
        return None
    manifest = _read_manifest(paths, name) or {}
    code = paths.code(name)
    try:
        requirements_changed = _requirements_hash(cfg, code) != manifest.get("requirements_hash")
    except CommandExecutionError:
        requirements_changed = True
    return dict(
        manifest,
        release=name,
        path=paths.release(name),
        code=code,
        virtualenv_ok=_venv_ok(paths.venv(name)),
        requirements_changed=requirements_changed,
        settings_changed=_settings_file(cfg)[1] != manifest.get("settings_hash"),
    )


def remote_revision(branch, revision=None, **kwargs):
    """
    The commit the environment should be at, found without changing anything:
    a full commit id pin as it is, else ``git ls-remote`` of the branch (or
    of the pinned tag), else the pin resolved in the cached clone.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.remote_revision staging
    """
    cfg, paths = _context(branch, kwargs)
    pin = revision if revision is not None else cfg["revision"]
    if pin is not None:
        pin = _check_name(str(pin), "revision", _REVISION_RE)
        if _SHA_RE.match(pin):
            return pin
        refs = [f"refs/tags/{pin}^{{}}", f"refs/tags/{pin}", f"refs/heads/{pin}"]
    else:
        refs = [f"refs/heads/{cfg['branch']}"]
    out = _git(["ls-remote", "--", cfg["repo_url"], *refs], f"git ls-remote {cfg['repo_url']}")
    found = dict(reversed(line.split("\t", 1)) for line in out.splitlines() if "\t" in line)
    for ref in refs:
        if ref in found:
            return found[ref]
    if pin is not None and os.path.isdir(paths.repo):
        with contextlib.suppress(CommandExecutionError):
            return _git(["rev-parse", "--verify", "--quiet", f"{pin}^{{commit}}"], "rev-parse", cwd=paths.repo,
                        runas=_runas(cfg))  # fmt: skip
        return None  # unknown here yet; a deploy fetches and then decides
    if pin is not None:
        return None
    raise CommandExecutionError(f"branch {cfg['branch']!r} not found in {cfg['repo_url']}")


# --------------------------------------------------------------------------
# Requirements and virtualenvs
# --------------------------------------------------------------------------

_INCLUDE_OPTS = ("-r", "--requirement", "-c", "--constraint")
_PATH_OPTS = ("-f", "--find-links", "-e", "--editable")


def _hash_path(digest, path):
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    elif os.path.isdir(path):
        for top, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__"))
            for name in sorted(files):
                digest.update(os.path.relpath(os.path.join(top, name), path).encode())
                _hash_path(digest, os.path.join(top, name))


def _requirements_hash(cfg, code):
    """
    What a virtualenv is built from: the requirements file, the files it
    includes with -r/-c, the local paths it installs from, the interpreter.
    """
    # the interpreter itself, not the name it was reached by: salt-call (python3) and
    # the minion (python) must key one interpreter's virtualenvs alike
    digest = hashlib.sha256(os.path.realpath(_python(cfg)).encode() + sys.version.encode())
    seen = set()

    def add_file(path):
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        if not os.path.isfile(path):
            raise CommandExecutionError(
                f"requirements file {os.path.relpath(path, code)} not found in {code}"
            )
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        digest.update(text.encode())
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            for i, word in enumerate(words):
                opt, _, value = word.partition("=")
                if opt in _INCLUDE_OPTS + _PATH_OPTS:
                    value = value or (words[i + 1] if i + 1 < len(words) else "")
                elif i == 0 and word.startswith((".", "/", "file:")):
                    value = word
                else:
                    continue
                value = value[5:] if value.startswith("file:") else value
                # pip resolves relative paths against the file, else the working folder
                near = os.path.join(os.path.dirname(path), value)
                target = near if os.path.exists(near) else os.path.join(code, value)
                if opt in _INCLUDE_OPTS:
                    add_file(target)
                else:
                    _hash_path(digest, target)

    add_file(os.path.join(code, cfg["requirements"]))
    return digest.hexdigest()[:16]


def _python(cfg):
    return cfg["python"] or sys.executable


def _build_venv(cfg, paths, venv, code, runas):
    """Create a virtualenv at ``venv`` and install the requirements; mark it complete last."""
    if os.path.lexists(venv):
        shutil.rmtree(venv)  # half-built by an earlier, interrupted deploy
    made = __salt__["virtualenv.create"](venv, venv_bin=_python(cfg), user=runas)
    if isinstance(made, dict) and made.get("retcode"):  # it returns a failure instead of raising
        raise CommandExecutionError(f"creating the virtualenv {venv} failed: {_output_tail(made)}")
    res = __salt__["pip.install"](
        requirements=os.path.join(code, cfg["requirements"]),
        bin_env=venv,
        cwd=code,
        cache_dir=paths.pip_cache,
        user=runas,
        env_vars={"PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if not isinstance(res, dict) or res.get("retcode") != 0:
        raise CommandExecutionError(f"pip install -r {cfg['requirements']} failed: {_output_tail(res)}")
    _write_atomic(os.path.join(venv, _VENV_MARKER), _now().isoformat() + "\n", runas)


def _ensure_venv(cfg, paths, name, runas):
    """Give release ``name`` an intact virtualenv; return (requirements hash, built?)."""
    code = paths.code(name)
    req_hash = _requirements_hash(cfg, code)
    link = paths.venv(name)
    if not cfg["reuse_virtualenvs"]:
        built = not _venv_ok(link) or os.path.islink(link)
        if built:
            if os.path.islink(link):
                os.remove(link)
            _build_venv(cfg, paths, link, code, runas)
        return req_hash, built
    shared = os.path.join(paths.virtualenvs, req_hash)
    built = not _venv_ok(shared)
    if built:
        _build_venv(cfg, paths, shared, code, runas)
    if os.path.isdir(link) and not os.path.islink(link):
        shutil.rmtree(link)
    _symlink_atomic(shared, link)
    return req_hash, built


# --------------------------------------------------------------------------
# The deploy pipeline: small named steps over one context
# --------------------------------------------------------------------------


class _Deploy:
    """What the steps of one deploy share."""

    def __init__(self, cfg, paths, revision=None, release=None):
        self.cfg = cfg
        self.paths = paths
        self.runas = _runas(cfg)
        if revision is not None:  # an argument, not a setting: validate it like the pin
            revision = _check_name(str(revision), "revision", _REVISION_RE)
        self.revision = revision if revision is not None else cfg["revision"]
        self.release = release
        self.sha = None
        self.req_hash = None
        self.settings_hash = None
        self.events = None  # decided at the first stage: is anyone listening?
        self.venv_built = None
        self.previous = None
        self.health = None
        self.timings = {}


def _step_layout(d):
    for path in d.paths.tree():
        _makedirs(path, d.runas)
    d.previous = _current_name(d.paths)
    _recover(d.paths, d.runas)


def _step_fetch(d):
    cfg, repo = d.cfg, d.paths.repo
    if not os.path.isdir(os.path.join(repo, ".git")):
        tmp = f"{repo}.clone-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _git(["clone", "--quiet", "--no-checkout", "--", cfg["repo_url"], tmp],
                 f"git clone {cfg['repo_url']}", runas=d.runas)  # fmt: skip
        except CommandExecutionError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.rename(tmp, repo)
    else:
        _git(["remote", "set-url", "origin", cfg["repo_url"]], "git remote set-url", cwd=repo, runas=d.runas)
        _git(["fetch", "--quiet", "--prune", "--force", "origin",
              "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"],
             f"git fetch {cfg['repo_url']}", cwd=repo, runas=d.runas)  # fmt: skip
    if d.revision is not None:
        try:
            # as the clone's owner: git refuses to read a repository another user owns
            d.sha = _git(["rev-parse", "--verify", "--quiet", f"{d.revision}^{{commit}}"], "", cwd=repo, runas=d.runas)
        except CommandExecutionError:
            raise CommandExecutionError(
                f"revision {d.revision!r} is not in {cfg['repo_url']}"
            ) from None
        _git(["checkout", "--quiet", "--force", "--detach", d.sha], "git checkout", cwd=repo, runas=d.runas)
    else:
        try:
            d.sha = _git(["rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{cfg['branch']}"], "", cwd=repo,
                         runas=d.runas)  # fmt: skip
        except CommandExecutionError:
            raise CommandExecutionError(
                f"branch {cfg['branch']!r} not found in {cfg['repo_url']}"
            ) from None
        _git(["checkout", "--quiet", "--force", "-B", cfg["branch"], d.sha], "git checkout", cwd=repo, runas=d.runas)


def _used_release_names(paths):
    """Every release name this environment has used: history, releases/, failed/."""
    used = [e.get("release") for e in _history(paths)]
    for folder in (paths.releases, paths.failed):
        used += os.listdir(folder) if os.path.isdir(folder) else []
    return [n for n in used if isinstance(n, str) and _RELEASE_RE.match(n)]


def _check_sorts_last(paths, name):
    """
    A name given by the caller (one for a whole fleet) must sort after every name
    used here: pruning keeps the newest by name, and an older-sorting release
    would make it drop the wrong ones.
    """
    last = max(_used_release_names(paths), default=None)
    if last is not None and name <= last:
        raise CommandExecutionError(
            f"release name {name} does not sort after {last}, already used in {paths.root} "
            "(a clock ahead of this one?); give a later release name"
        )


def _new_release_name(paths):
    """
    A UTC timestamp, later than any release name used before: names sort in
    deploy order even when pruning frees a name or the clock steps back.
    """
    when = _now().replace(microsecond=0)
    used = _used_release_names(paths)
    if used:
        last = datetime.datetime.strptime(max(used), _RELEASE_FORMAT)
        when = max(when, last.replace(tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=1))
    while True:
        name = when.strftime(_RELEASE_FORMAT)
        if not any(os.path.lexists(os.path.join(p, name)) for p in (paths.releases, paths.failed)):
            return name
        when += datetime.timedelta(seconds=1)


def _step_cut_release(d):
    """The release's code: a clone sharing the cache's objects (small .git), at the commit."""
    if d.release is None:
        d.release = _new_release_name(d.paths)
    else:
        _check_sorts_last(d.paths, d.release)
    rel = d.paths.release(d.release)
    if os.path.lexists(rel):
        raise CommandExecutionError(f"release {d.release} already exists in {d.paths.releases}")
    _makedirs(rel, d.runas)
    code = d.paths.code(d.release)
    # no hook samples, no reflogs: the release's .git is a few small files
    _git(["clone", "--quiet", "--shared", "--no-checkout", "--template=", "--config=core.logAllRefUpdates=false",
          "--", d.paths.repo, code], "git clone --shared", runas=d.runas)  # fmt: skip
    _git(["checkout", "--quiet", "--detach", d.sha], "git checkout", cwd=code, runas=d.runas)


def _step_link_shared(d):
    code = d.paths.code(d.release)
    exclude = []
    for name in d.cfg["shared_dirs"]:
        link = os.path.join(code, name)
        if os.path.isdir(link) and not os.path.islink(link):
            shutil.rmtree(link)  # the shared folder wins, as in Capistrano
        elif os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.join(d.paths.shared, name), link)
        _chown(link, d.runas)
        exclude.append(f"/{name}\n")
    _makedirs(os.path.join(code, ".git", "info"), d.runas)
    with open(os.path.join(code, ".git", "info", "exclude"), "a", encoding="utf-8") as fh:
        fh.writelines(exclude)
    _chown(os.path.join(code, ".git", "info", "exclude"), d.runas)


def _env_module(env):
    """An environment's name as a Python module name: topics/foo -> topics_foo."""
    return re.sub(r"\W", "_", env)


def _py_literal(value, key):
    """
    A pillar value as plain Python whose repr is valid source: pillar gives
    OrderedDicts (their repr needs an import) and YAML may give dates. Nested
    keys are sorted so that the file, and its hash, do not depend on pillar's order.
    """
    if isinstance(value, dict):
        return {k: _py_literal(v, f"{key}[{k!r}]") for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_py_literal(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return value
    raise SaltInvocationError(
        f"invalid settings value {key} = {value!r}: use strings, numbers, booleans, null, lists and mappings"
    )


def _settings_file(cfg):
    """The settings file pillar asks for: (path in the code folder, hash, text), or Nones."""
    if not cfg["settings"]:
        return None, None, None
    lines = ["# Written by vumi-salt from pillar vumi:settings at each deploy: edit pillar, not this file.\n"]
    if cfg["settings_extends"]:
        lines.append(f"from {cfg['settings_extends']} import *  # noqa: F401,F403\n")
    lines.extend(f"{key} = {_py_literal(value, key)!r}\n" for key, value in sorted(cfg["settings"].items()))
    text = "".join(lines)
    relpath = cfg["settings_path"].format(env=_env_module(cfg["env"]))
    # where the file goes is part of it: a new settings_path must reach the releases too
    return relpath, hashlib.sha256(f"{relpath}\0{text}".encode()).hexdigest()[:16], text


def _step_settings(d):
    """Render pillar's settings into the release: secrets stay out of the repo and away from other users."""
    relpath, d.settings_hash, text = _settings_file(d.cfg)
    if relpath is None:
        return
    path = os.path.join(d.paths.code(d.release), relpath)
    if os.path.islink(path) or os.path.islink(os.path.dirname(path)):
        raise CommandExecutionError(f"{path} is a symlink; refusing to write settings through it")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_atomic(path, text, d.runas, mode=0o640)


def _step_virtualenv(d):
    d.req_hash, d.venv_built = _ensure_venv(d.cfg, d.paths, d.release, d.runas)


def _step_manifest(d):
    """Written last: a release with a manifest is complete."""
    _write_atomic(os.path.join(d.paths.release(d.release), "REVISION"), d.sha + "\n", d.runas)
    _write_manifest(d.paths, d.release, d.runas, {
        "release": d.release,
        "env": d.cfg["env"],
        "branch": d.cfg["branch"],
        "revision": d.sha,
        "pinned": d.revision,
        "repo_url": d.cfg["repo_url"],
        "requirements_hash": d.req_hash,
        "settings_hash": d.settings_hash,
        "virtualenv": os.path.realpath(d.paths.venv(d.release)),
        "deployed_at": _now().isoformat(timespec="seconds"),
        "deployed_by": getpass.getuser(),
    })  # fmt: skip


def _write_manifest(paths, name, runas, manifest):
    _write_atomic(paths.manifest(name), json.dumps(manifest, indent=2, sort_keys=True) + "\n", runas)


def _step_publish(d):
    _publish(d.paths, d.release)


def _publish(paths, name):
    if not _read_manifest(paths, name):
        raise CommandExecutionError(f"release {name} is not complete; refusing to publish it")
    _symlink_atomic(os.path.join("releases", name), paths.current)


def _step_health(d):
    """
    Before the release may become current: one webapp of it, on a spare port,
    must answer (the running webapps and ``current`` are not touched).
    """
    if d.cfg["health_check"]:
        d.health = _health_check(d.cfg, d.paths, d.release)


def _step_prune(d):
    _prune(d.cfg, d.paths, d.cfg["keep_releases"])


_PREPARE = [
    ("layout", _step_layout),
    ("fetch", _step_fetch),
    ("cut_release", _step_cut_release),
    ("link_shared", _step_link_shared),
    ("settings", _step_settings),
    ("virtualenv", _step_virtualenv),
    ("manifest", _step_manifest),
    ("health", _step_health),
]
_PUBLISH = [
    ("publish", _step_publish),
    ("prune", _step_prune),
]


def _run_steps(d, steps):
    for stage, step in steps:
        started = time.monotonic()
        try:
            step(d)
        except (CommandExecutionError, SaltInvocationError, OSError) as exc:
            _event(d, stage, started, "failed", error=str(exc))
            _fail(d, stage, exc)
        d.timings[stage] = round(time.monotonic() - started, 3)
        _event(d, stage, started, "done")


def _event_bus_up():
    """
    Whether an event would reach anyone: under a master, yes; masterless only
    when a minion daemon's event bus runs (otherwise each event waits a second
    for a socket that is not there).
    """
    local = __opts__.get("local") or __opts__.get("file_client") == "local"
    if not local or __opts__.get("use_master_when_local") or __opts__.get("ipc_mode") == "tcp":
        return True
    sock_dir = __opts__.get("sock_dir") or ""
    return os.path.isdir(sock_dir) and any(
        n.startswith("minion_event_") and n.endswith("_pull.ipc") for n in os.listdir(sock_dir)
    )


def _event(d, stage, started, outcome, **extra):
    """Live progress: ``salt-run state.event`` (or the minion's bus, masterless) shows each stage."""
    if d.events is None:
        d.events = d.cfg["events"] and _event_bus_up()
    if not d.events:
        return
    data = {"env": d.cfg["env"], "stage": stage, "release": d.release, "revision": d.sha,
            "elapsed": round(time.monotonic() - started, 3), "outcome": outcome, **extra}  # fmt: skip
    try:
        __salt__["event.send"](f"vumi/deploy/{d.cfg['env']}/{stage}", data)
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("could not fire the %s event: %s", stage, exc)  # progress is best effort


def _fail(d, stage, exc):
    """Move a half-built release aside, record why, and raise."""
    moved = None
    if d.release and stage in dict(_PREPARE) and d.release != _current_name_safe(d.paths):
        rel = os.path.join(d.paths.releases, d.release)
        if os.path.lexists(rel):
            try:
                _makedirs(d.paths.failed, d.runas)
                moved = os.path.join(d.paths.failed, d.release)
                os.rename(rel, moved)
            except (OSError, CommandExecutionError) as problem:  # the next deploy's _recover retries
                log.warning("could not move %s to %s: %s", rel, d.paths.failed, problem)
                moved = None
    if os.path.isdir(d.paths.root):
        _record(d.paths, "failed", stage=stage, release=d.release, revision=d.sha,
                reason=str(exc), previous=d.previous)  # fmt: skip
    kind = SaltInvocationError if isinstance(exc, SaltInvocationError) else CommandExecutionError
    where = f"; the half-built release is kept in {moved}" if moved else ""
    raise kind(f"deploy of {d.cfg['env']} failed at stage {stage!r}: {exc}{where}") from exc


def _current_name_safe(paths):
    with contextlib.suppress(CommandExecutionError):
        return _current_name(paths)
    return None


def _recover(paths, runas=None):
    """
    After a crash (under the deploy lock: no deploy of ours is at work here):
    drop leftover temporary links, half-made clones, git's lock files in the
    cache and health-check webapps; set incomplete releases aside.
    """
    for name in os.listdir(paths.root):
        if name.startswith("current.tmp-"):
            os.remove(os.path.join(paths.root, name))
    for name in os.listdir(paths.repositories):
        if name.startswith(f"{paths.app}.clone-"):
            shutil.rmtree(os.path.join(paths.repositories, name), ignore_errors=True)
    for name in os.listdir(paths.releases):
        if name.startswith(".removing-"):  # a prune killed mid-way
            _remove_tree(os.path.join(paths.releases, name))
    # a git killed mid-fetch or mid-checkout leaves index.lock, refs/...lock: every later git fails
    for top, dirs, files in os.walk(os.path.join(paths.repo, ".git")):
        dirs[:] = [n for n in dirs if n != "objects"]
        for name in files:
            if name.endswith(".lock"):
                os.remove(os.path.join(top, name))
    _stop_leftover_health_checks(paths)
    current_name = _current_name(paths)
    # complete but never recorded, and newer than current: killed after its manifest,
    # before or during its health check (older unrecorded ones are left alone)
    recorded = {e.get("release") for e in _history(paths) if e.get("action") in ("prepare", "deploy", "rollback")}
    for name in _release_names(paths):
        interrupted = name not in recorded and (current_name is None or name > current_name)
        if name != current_name and (not _read_manifest(paths, name) or interrupted):
            _makedirs(paths.failed, runas)
            os.rename(paths.release(name), os.path.join(paths.failed, name))
            _record(paths, "failed", stage="recover", release=name,
                    reason="left by an interrupted deploy (incomplete, or never recorded as prepared or deployed)")


def _summary(d, action):
    return {
        "env": d.cfg["env"],
        "release": d.release,
        "revision": d.sha,
        "previous": d.previous,
        "path": d.paths.release(d.release),
        "current": d.paths.current,
        "requirements_hash": d.req_hash,
        "virtualenv_built": d.venv_built,
        "health": d.health,
        "timings": d.timings,
        "action": action,
    }


def prepare(branch, revision=None, release=None, **kwargs):
    """
    Build a complete release without making it current: layout, fetch, cut
    release, link shared folders, virtualenv, manifest, and (with
    ``health_check``) the health check of one webapp of it on a spare port.
    Returns its name.

    branch
        The environment.
    revision
        An exact commit or tag instead of the branch's latest commit.
    release
        The release's name (``YYYYmmdd_HHMMSS``); by default the time now, in UTC.
        A given name (one for a whole fleet) must sort after every release name
        used here before, or the prepare fails.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.prepare staging
    """
    cfg, paths = _context(branch, kwargs)
    d = _Deploy(cfg, paths, revision, release)
    if release is not None:
        paths.release(release)
    _makedirs(paths.root, d.runas)  # the tree's owner owns its root too
    with _deploy_lock(cfg, paths):
        _run_steps(d, _PREPARE)
        _record(paths, "prepare", release=d.release, revision=d.sha, timings=d.timings)
    return _summary(d, "prepare")


def publish(branch, release, **kwargs):
    """
    Make a prepared release current (one atomic rename of a symlink), then
    remove the releases beyond ``keep_releases``.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.publish staging 20261126_153000
    """
    cfg, paths = _context(branch, kwargs)
    d = _Deploy(cfg, paths, release=release)
    paths.release(release)  # a bad name fails before anything else
    with _deploy_lock(cfg, paths):
        if not os.path.isdir(paths.release(release)):
            raise SaltInvocationError(f"unknown release {release!r} in {paths.releases}")
        d.previous = _current_name(paths)
        d.sha = (_read_manifest(paths, release) or {}).get("revision")
        _run_steps(d, _PUBLISH)
        _record(paths, "deploy", release=release, revision=d.sha, previous=d.previous)
    return _summary(d, "publish")


def deploy(branch, revision=None, **kwargs):
    """
    Deploy the branch (or an exact revision) as a new release and make it
    current, like ``fab deploy:<branch>``: layout; clone or fetch the cached
    repository; cut a timestamped release from it; link the shared folders;
    build (or reuse) its virtualenv; switch ``current``; prune old releases.
    Always cuts a release; the ``vumi.deployed`` state decides whether one is
    needed. Running webapps are not restarted.

    A failure at any step leaves ``current`` where it was; the half-built
    release is moved to ``failed/`` and the history log says why.

    With ``health_check: true`` (the SLS turns it on for environments with
    ports) the switch waits for the new release to answer: one webapp of it
    is started on a spare loopback port, from its own code folder and
    virtualenv, asked ``GET health_path`` (2xx or 3xx passes; ``health_path:
    null`` only connects) within ``health_timeout`` seconds, and stopped. A
    release that does not start or answer fails the deploy at stage
    ``health`` with the HTTP status or its log's last lines; the running
    webapps are not touched.

    branch
        The environment (and, unless pillar says otherwise, the git branch).
    revision
        An exact commit or tag instead of the branch's latest commit.
    kwargs
        Any setting, overriding pillar (``repo_url``, ``base_dir``, ...).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.deploy staging
        salt '*' vumi.deploy production revision=3f2a1c9
    """
    cfg, paths = _context(branch, kwargs)
    d = _Deploy(cfg, paths, revision)
    _makedirs(paths.root, d.runas)  # the tree's owner owns its root too
    with _deploy_lock(cfg, paths):
        _run_steps(d, _PREPARE + _PUBLISH)
        _record(paths, "deploy", release=d.release, revision=d.sha, previous=d.previous, timings=d.timings)
    return _summary(d, "deploy")


def layout(branch, **kwargs):
    """
    Create the environment's folders (idempotent), like ``fab layout:<branch>``.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.layout staging
    """
    cfg, paths = _context(branch, kwargs)
    runas = _runas(cfg)
    _refuse_links(paths)
    _current_name(paths)  # a current that is a folder, or points outside, is refused here too
    created = [path for path in paths.tree() if _makedirs(path, runas)]
    return {"path": paths.root, "created": created}


def update(branch, **kwargs):
    """
    Pull the branch's latest commits into the current release in place (for
    small fixes), like ``fab update:<branch>``. The webapp is not restarted;
    when the requirements changed, run ``vumi.create_virtualenv``.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.update staging
    """
    cfg, paths = _context(branch, kwargs)
    if cfg["revision"] is not None:
        raise SaltInvocationError(
            f"{cfg['env']} is pinned to revision {cfg['revision']}; change the pin and deploy"
        )
    d = _Deploy(cfg, paths)
    with _deploy_lock(cfg, paths):
        name = _current_name(paths)
        if name is None:
            raise CommandExecutionError(f"{cfg['env']} has no current release to update; deploy first")
        manifest = _read_manifest(paths, name) or {}
        _run_steps(d, [("fetch", _step_fetch)])
        code = paths.code(name)
        _git(["fetch", "--quiet", "origin"], "git fetch", cwd=code, runas=d.runas)
        # --force: the settings file rendered over a tracked file is the one local change a
        # release has; git would refuse to check out a commit that changes that file
        _git(["checkout", "--quiet", "--force", "--detach", d.sha], "git checkout", cwd=code, runas=d.runas)
        d.release = name
        _step_settings(d)  # pillar's settings again, over what the commit brought
        old = manifest.get("revision")
        manifest.update(revision=d.sha, settings_hash=d.settings_hash, updated_at=_now().isoformat(timespec="seconds"))
        _write_atomic(os.path.join(paths.release(name), "REVISION"), d.sha + "\n", d.runas)
        _write_manifest(paths, name, d.runas, manifest)
        if old != d.sha:
            _record(paths, "update", release=name, revision=d.sha, previous_revision=old)
        try:
            requirements_changed = _requirements_hash(cfg, code) != manifest.get("requirements_hash")
        except CommandExecutionError:
            requirements_changed = True
    return {
        "release": name,
        "old_revision": old,
        "new_revision": d.sha,
        "changed": old != d.sha,
        "requirements_changed": requirements_changed,
    }


def create_virtualenv(branch, release=None, **kwargs):
    """
    (Re)build the virtualenv of a release (default: the current one) from its
    requirements file, like ``fab create_virtualenv:<branch>``. With
    ``reuse_virtualenvs`` a virtualenv already built from the same
    requirements is linked instead of built again.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.create_virtualenv staging
    """
    cfg, paths = _context(branch, kwargs)
    runas = _runas(cfg)
    if release is not None:
        paths.release(release)  # a bad name fails before anything else
    with _deploy_lock(cfg, paths):
        name = _resolve_release(paths, release)
        req_hash, built = _ensure_venv(cfg, paths, name, runas)
        manifest = _read_manifest(paths, name)
        if manifest is not None:
            manifest.update(requirements_hash=req_hash, virtualenv=os.path.realpath(paths.venv(name)))
            _write_manifest(paths, name, runas, manifest)
    return {
        "release": name,
        "virtualenv": os.path.realpath(paths.venv(name)),
        "requirements_hash": req_hash,
        "built": built,
    }


def _resolve_release(paths, release):
    if release is None:
        name = _current_name(paths)
        if name is None:
            raise CommandExecutionError(f"{paths.root} has no current release; deploy first")
        return name
    if not os.path.isdir(paths.release(release)):
        raise SaltInvocationError(f"unknown release {release!r} in {paths.releases}")
    return release


def _venv_env(paths, name):
    venv = paths.venv(name)
    return {
        "VIRTUAL_ENV": venv,
        "PATH": os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", os.defpath),
    }


def execute(branch, command, release=None, **kwargs):
    """
    Run a shell command in a release's code folder (where ``manage.py`` is)
    with its virtualenv active, like ``fab execute:<branch>,"<command>"``.
    A non-zero exit fails the job.

    command
        A shell line, e.g. ``./manage.py syncdb``.
    release
        Default: the current release.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.execute production "./manage.py syncdb"
    """
    cfg, paths = _context(branch, kwargs)
    if not isinstance(command, str) or not command.strip() or "\0" in command:
        raise SaltInvocationError(f"invalid command {command!r}")
    name = _resolve_release(paths, release)
    env = dict(_venv_env(paths, name), DJANGO_SETTINGS_MODULE=_settings_module(cfg))
    # the command is the operator's own shell line, so it runs through the shell
    res = __salt__["cmd.run_all"](
        command, cwd=paths.code(name), runas=_runas(cfg), env=env, python_shell=True
    )
    if res["retcode"] != 0:
        __context__["retcode"] = res["retcode"]
    return {
        "release": name,
        "command": command,
        "stdout": res["stdout"],
        "stderr": res["stderr"],
        "retcode": res["retcode"],
    }


def managepy(branch, command, release=None, **kwargs):
    """
    Run ``manage.py <command> --settings=<settings_module>`` in a release's
    code folder with its virtualenv, as the Fabric-era fabfile did. A
    non-zero exit fails the job.

    command
        The management command and its arguments, e.g. ``syncdb --noinput``.
    release
        Default: the current release.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.managepy production syncdb
        salt '*' vumi.managepy staging "migrate --noinput"
    """
    cfg = settings(branch, **kwargs)
    if not isinstance(command, str) or not command.strip() or "\0" in command:
        raise SaltInvocationError(f"invalid manage.py command {command!r}")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise SaltInvocationError(f"invalid manage.py command {command!r}: {exc}") from None
    # each word quoted: the command is arguments to manage.py, not a shell line
    line = shlex.join(["python", "manage.py", *words, f"--settings={_settings_module(cfg)}"])
    return execute(branch, line, release=release, **kwargs)


def _rollback_target(paths):
    """Replay the history as a stack: deploys push, rollbacks pop."""
    stack = []
    for entry in _history(paths):
        if entry.get("action") == "deploy":
            stack.append(entry.get("release"))
        elif entry.get("action") == "rollback":
            if entry.get("named"):
                stack.append(entry.get("release"))
            else:
                while stack and stack[-1] != entry.get("release"):
                    stack.pop()
    current_name = _current_name(paths)
    while stack and stack[-1] == current_name:
        stack.pop()
    for name in reversed(stack):
        if name != current_name and _read_manifest(paths, name):
            return name
    return None


def rollback(branch, release=None, **kwargs):
    """
    Point ``current`` back at the release that was current before it (from the
    history log), or at a named release. Webapps are not restarted.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.rollback staging
        salt '*' vumi.rollback staging 20261126_153000
    """
    cfg, paths = _context(branch, kwargs)
    if release is not None:
        paths.release(release)  # a bad name fails before anything else
    with _deploy_lock(cfg, paths):
        previous = _current_name(paths)
        if release is None:
            target = _rollback_target(paths)
            if target is None:
                raise CommandExecutionError(f"{cfg['env']} has no earlier release to roll back to")
        else:
            target = _resolve_release(paths, release)
        if not _venv_ok(paths.venv(target)):
            raise CommandExecutionError(f"release {target} has no intact virtualenv; run vumi.create_virtualenv")
        _publish(paths, target)
        manifest = _read_manifest(paths, target) or {}
        _record(paths, "rollback", release=target, previous=previous,
                revision=manifest.get("revision"), named=release is not None)  # fmt: skip
    return {"release": target, "previous": previous, "revision": manifest.get("revision")}


def _unpublished(paths):
    """Releases the history says were prepared and never made current (publish, rollback)."""
    prepared, published = set(), set()
    for entry in _history(paths):
        if entry.get("action") == "prepare":
            prepared.add(entry.get("release"))
        elif entry.get("action") in ("deploy", "rollback"):
            published.add(entry.get("release"))
    return prepared - published


def _remove_tree(path):
    """
    Out of sight first (one rename), then deleted: a crash mid-way never leaves a
    half-deleted release or virtualenv that still looks complete.
    """
    trash = os.path.join(os.path.dirname(path), f".removing-{os.path.basename(path)}")
    if not os.path.basename(path).startswith(".removing-"):
        os.rename(path, trash)
        path = trash
    shutil.rmtree(path, ignore_errors=True)


def _prune(cfg, paths, limit, unpublished=False):
    """
    Remove all but the newest ``limit`` complete releases (never current), then
    orphans. With ``unpublished``, first the releases prepared but never published
    (not in a deploy's own prune: a fleet deploy may be about to publish them).
    """
    current_name = _current_name(paths)
    removed = []
    if unpublished:
        for name in sorted((_unpublished(paths) & set(_release_names(paths))) - {current_name}):
            _remove_tree(paths.release(name))
            removed.append(name)
    complete = [n for n in _release_names(paths) if _read_manifest(paths, n)]
    keep = set(complete[-limit:]) | {current_name}
    for name in _release_names(paths):
        if name not in keep and (name in complete or name != current_name):
            _remove_tree(paths.release(name))
            removed.append(name)
    failed = sorted(os.listdir(paths.failed)) if os.path.isdir(paths.failed) else []
    for name in failed[: max(0, len(failed) - cfg["keep_failed"])]:
        shutil.rmtree(os.path.join(paths.failed, name), ignore_errors=True)
    in_use = {
        os.path.realpath(paths.venv(n))
        for n in _release_names(paths)
    }
    venvs_removed = []
    if os.path.isdir(paths.virtualenvs):
        for name in sorted(os.listdir(paths.virtualenvs)):
            path = os.path.join(paths.virtualenvs, name)
            if os.path.realpath(path) not in in_use:
                _remove_tree(path)
                venvs_removed.append(name)
    return {
        "removed": removed,
        "kept": [n for n in _release_names(paths)],
        "virtualenvs_removed": venvs_removed,
    }


def cleanup(branch, limit=None, **kwargs):
    """
    Remove all but the newest ``limit`` releases (default ``keep_releases``);
    the current release is always kept, in addition if it is older. Releases
    prepared (``vumi.prepare``) but never published are removed first, whatever
    their age: a fleet deploy that did not finish left them. Shared
    virtualenvs no longer used by a kept release are removed too.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.cleanup staging limit=3
    """
    cfg, paths = _context(branch, kwargs)
    limit = cfg["keep_releases"] if limit is None else limit
    if isinstance(limit, bool) or not str(limit).isdigit() or int(limit) < 1:
        raise SaltInvocationError(f"invalid limit {limit!r}: must be an integer >= 1")
    if not os.path.isdir(paths.root):
        return {"removed": [], "kept": [], "virtualenvs_removed": []}
    with _deploy_lock(cfg, paths):
        return _prune(cfg, paths, int(limit), unpublished=True)


def discard(branch, release, **kwargs):
    """
    Remove one prepared release that is not to be published (a fleet deploy
    failed on another host). Never the current release, nor one that has been
    current (that is cleanup's and rollback's business). A release that is not
    there (never prepared here, or already moved to ``failed/``) is no error:
    the orchestration discards on every host. Its virtualenv stays for a
    retry to reuse; ``vumi.cleanup`` removes it once no release uses it.

    branch
        The environment.
    release
        The release's name, as ``vumi.prepare`` returned it.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.discard staging 20261126_153000
    """
    cfg, paths = _context(branch, kwargs)
    path = paths.release(release)  # a bad name fails before anything else
    if not os.path.isdir(paths.root):
        return {"release": release, "discarded": False, "comment": f"{cfg['env']} is not deployed here"}
    with _deploy_lock(cfg, paths):
        if not os.path.isdir(path):
            return {"release": release, "discarded": False, "comment": f"no release {release} here"}
        if release == _current_name(paths):
            raise CommandExecutionError(f"release {release} is current; refusing to discard it")
        if release not in _unpublished(paths) and _read_manifest(paths, release):
            raise CommandExecutionError(
                f"release {release} has been published before; refusing to discard it (see vumi.cleanup)"
            )
        revision = (_read_manifest(paths, release) or {}).get("revision")
        shutil.rmtree(path)
        _record(paths, "discard", release=release, revision=revision)
    return {"release": release, "discarded": True, "revision": revision,
            "comment": f"release {release} discarded"}  # fmt: skip


# --------------------------------------------------------------------------
# The webapp: one process per port
# --------------------------------------------------------------------------


def _settings_module(cfg):
    return cfg["settings_module"].format(env=_env_module(cfg["env"]))


def _proc_start_time(pid):
    """The process's start time in clock ticks since boot, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # zombie or dead: exited
        return None
    return fields[19]


def _read_pidfile(paths, port):
    try:
        with open(paths.pidfile(port), encoding="utf-8") as fh:
            lines = fh.read().split()
        return {"pid": int(lines[0]), "started": lines[1], "release": lines[2]}
    except (OSError, ValueError, IndexError):
        return None


def _ours(paths, port):
    """The pid file's process if it is still the one we started; else drop the stale pid file."""
    info = _read_pidfile(paths, port)
    if info is None:
        if os.path.lexists(paths.pidfile(port)):
            os.remove(paths.pidfile(port))
        return None
    if _proc_start_time(info["pid"]) != info["started"]:
        log.info("removing stale pid file %s (pid %s)", paths.pidfile(port), info["pid"])
        os.remove(paths.pidfile(port))
        return None
    return info


def _port_open(host, port, timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _file_tail(path, lines=20):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return _tail(fh.read(), lines)
    except OSError:
        return ""


def _webapp_command(cfg, paths, name, port, pidfile=None, logfile=None):
    fields = {
        "port": port,
        "host": cfg["host"],
        "pidfile": pidfile or paths.pidfile(port),
        "logfile": logfile or paths.logfile(port),
        "settings": _settings_module(cfg),
        "env": cfg["env"],
        "branch": cfg["branch"],
        "release": name,
        "release_path": paths.release(name),
        "code": paths.code(name),
        "venv": paths.venv(name),
        "current": paths.current,
    }
    quoted = {k: shlex.quote(str(v)) for k, v in fields.items()}
    try:
        return cfg["webapp_command"].format(**quoted)
    except (KeyError, IndexError, ValueError) as exc:
        raise SaltInvocationError(f"invalid webapp_command {cfg['webapp_command']!r}: {exc}") from None


def _reap(pid):
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_dead(pid, started, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if _proc_start_time(pid) != started:
            return True
        time.sleep(0.02)
    return False


def _start(cfg, paths, port):
    name = _current_name(paths)
    if name is None:
        raise CommandExecutionError(f"{cfg['env']} has no current release; deploy first")
    running = _ours(paths, port)
    if running:
        return {"port": port, "pid": running["pid"], "release": running["release"],
                "started": False, "comment": f"webapp already running on port {port}"}  # fmt: skip
    if _port_open(cfg["host"], port):
        raise CommandExecutionError(f"port {port} on {cfg['host']} is already in use by another process")
    proc = _spawn(cfg, paths, name, port, paths.pidfile(port), paths.logfile(port))
    return {"port": port, "pid": proc.pid, "release": name, "started": True,
            "comment": f"webapp started on port {port}"}  # fmt: skip


def _spawn(cfg, paths, name, port, pidfile, logfile):
    """
    Start release ``name``'s webapp on ``port`` (its own process group, as
    ``user``), record it in ``pidfile``, and return the process once the port
    accepts connections; raise with the log's tail if it exits or never listens.
    """
    runas = _runas(cfg)
    for folder in (paths.logs, paths.pids):
        _makedirs(folder, runas)
    manifest = _read_manifest(paths, name) or {}
    env = dict(
        os.environ,
        **_venv_env(paths, name),
        VUMI_ENV=cfg["env"],
        VUMI_RELEASE=name,
        VUMI_REVISION=manifest.get("revision") or "",
        VUMI_PORT=str(port),
        DJANGO_SETTINGS_MODULE=_settings_module(cfg),
    )
    command = _webapp_command(cfg, paths, name, port, pidfile, logfile)
    user = pwd.getpwnam(runas) if runas else None
    try:  # O_NOFOLLOW: root must not append to wherever a link planted as the log points
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    except OSError as exc:
        raise CommandExecutionError(f"cannot open the webapp's log {logfile}: {exc}") from None
    with open(fd, "ab") as logfh:
        os.fchmod(logfh.fileno(), 0o640)  # the webapp's log may tell secrets: not for every user
        _chown(logfile, runas)
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            ["/bin/sh", "-c", "exec " + command],
            cwd=os.path.realpath(paths.code(name)),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logfh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the Salt job; its own process group
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            # the user's own groups, not root's: Popen would keep the caller's otherwise
            extra_groups=os.getgrouplist(user.pw_name, user.pw_gid) if user else None,
        )
    started = _proc_start_time(proc.pid)
    _write_atomic(pidfile, f"{proc.pid}\n{started}\n{name}\n", runas)
    deadline = time.monotonic() + cfg["start_timeout"]
    while True:
        if proc.poll() is not None:
            problem = f"exited with code {proc.returncode}"
            break
        if _port_open(cfg["host"], port):
            return proc
        if time.monotonic() >= deadline:
            _signal_group(proc.pid, started, cfg["stop_timeout"], cfg["stop_signal"])
            problem = f"did not open the port within {cfg['start_timeout']:g}s"
            break
        time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        os.remove(pidfile)
    raise CommandExecutionError(f"webapp on port {port} {problem}; last lines of {logfile}:\n{_file_tail(logfile)}")


def _spare_port(host):
    """A port nobody listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _health_check(cfg, paths, name):
    """
    Start one webapp of release ``name`` on a spare port (not through
    ``current``: its own code folder and virtualenv), ask it ``health_path``
    (or only connect), stop it. Return the evidence; raise with it on failure.
    """
    port = _spare_port(cfg["host"])
    # names of their own: a leftover (its deploy killed) is found and stopped by _recover
    pidfile = os.path.join(paths.pids, f"webapp.health.{port}.pid")
    logfile = os.path.join(paths.logs, f"webapp.health.{port}.log")
    try:
        proc = _spawn(cfg, paths, name, port, pidfile, logfile)
    except CommandExecutionError as exc:
        raise CommandExecutionError(f"the webapp of release {name} did not start: {exc}") from None
    started = _proc_start_time(proc.pid)
    try:
        healthy, evidence = _probe(cfg, port)
    finally:
        if started is not None:
            _signal_group(proc.pid, started, cfg["stop_timeout"], cfg["stop_signal"])
        proc.poll()  # reaped: no zombie left in a long-running minion
        with contextlib.suppress(FileNotFoundError):
            os.remove(pidfile)
    if not healthy:
        raise CommandExecutionError(
            f"health check of release {name} failed: {evidence}; last lines of {logfile}:\n{_file_tail(logfile)}"
        )
    with contextlib.suppress(FileNotFoundError):
        os.remove(logfile)  # kept only when it failed, as evidence
    return {"port": port, "path": cfg["health_path"], "evidence": evidence}


def _probe(cfg, port):
    """(healthy, evidence): GET ``health_path`` answers 2xx or 3xx; with no path, the port accepts."""
    host, path = cfg["host"], cfg["health_path"]
    if path is None:
        return True, f"port {port} accepts connections"  # _spawn waited for that
    deadline = time.monotonic() + cfg["health_timeout"]
    while True:
        conn = http.client.HTTPConnection(host, port, timeout=max(0.1, deadline - time.monotonic()))
        try:
            conn.request("GET", path, headers={"User-Agent": "vumi-salt health check"})
            resp = conn.getresponse()
            body = resp.read(300).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException) as exc:
            # not answering yet (or reset while it starts): ask again until the deadline
            if time.monotonic() + 0.1 >= deadline:
                return False, f"GET {path} on port {port} got no answer within {cfg['health_timeout']:g}s: {exc}"
            time.sleep(0.1)
            continue
        finally:
            conn.close()
        evidence = f"GET {path} on port {port} answered HTTP {resp.status} {resp.reason}"
        if 200 <= resp.status < 400:
            return True, evidence
        return False, f"{evidence}: {body!r}" if body else evidence


def _stop_leftover_health_checks(paths):
    """A health-check webapp whose deploy was killed: stop it (if it still is the process we started)."""
    if not os.path.isdir(paths.pids):
        return
    for name in os.listdir(paths.pids):
        match = re.match(r"^webapp\.health\.(\d+)\.pid$", name)
        if not match:
            continue
        try:
            with open(os.path.join(paths.pids, name), encoding="utf-8") as fh:
                pid, started = fh.read().split()[:2]
            pid = int(pid)
        except (OSError, ValueError):
            pid, started = None, None
        if pid and _proc_start_time(pid) == started:
            log.info("stopping the health-check webapp (pid %s) left by an interrupted deploy", pid)
            _signal_group(pid, started, 5)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(paths.pids, name))
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(paths.logs, f"webapp.health.{match.group(1)}.log"))


def _signal_group(pid, started, grace, sig="SIGTERM"):
    """
    Send ``sig`` to the process group, SIGKILL it after ``grace`` seconds (its
    requests in flight get that long to finish); True if it had to be killed.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.Signals[sig])
    if _wait_dead(pid, started, grace):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _wait_dead(pid, started, 5)
    return True


def _stop(cfg, paths, port):
    running = _ours(paths, port)
    if running is None:
        return {"port": port, "stopped": False, "comment": f"webapp not running on port {port}"}
    # re-checked right before signalling: the pid still is the process we started
    if _proc_start_time(running["pid"]) == running["started"]:
        killed = _signal_group(running["pid"], running["started"], cfg["stop_timeout"], cfg["stop_signal"])
    else:
        killed = False
    with contextlib.suppress(FileNotFoundError):
        os.remove(paths.pidfile(port))
    return {"port": port, "pid": running["pid"], "release": running["release"], "stopped": True,
            "killed": killed, "comment": f"webapp stopped on port {port}"}  # fmt: skip


def _restart(cfg, paths, port):
    stopped = _stop(cfg, paths, port)
    started = _start(cfg, paths, port)
    return dict(started, old_pid=stopped.get("pid"), old_release=stopped.get("release"),
                comment=f"webapp restarted on port {port}")  # fmt: skip


@contextlib.contextmanager
def _port_lock(cfg, paths, port):
    """
    One start, stop or restart of a port at a time, across Salt jobs: without it two
    jobs starting one port both find it free, the loser's process exits on the taken
    port while its pid file replaces the winner's, and the running webapp can no
    longer be stopped.
    """
    if not os.path.isdir(paths.root):
        yield  # nothing deployed, nothing running: the action says so
        return
    _refuse_links(paths)
    _makedirs(paths.pids, _runas(cfg))  # the webapp may write its own pid file there
    with _flock(
        os.path.join(paths.pids, f"webapp.{port}.lock"),
        cfg["start_timeout"] + 2 * cfg["stop_timeout"] + 10,
        lambda holder: CommandExecutionError(
            f"another job is still starting or stopping the webapp on port {port}: {holder}"
        ),
    ):
        yield


def _locked(action, cfg, paths, port):
    with _port_lock(cfg, paths, port):
        return action(cfg, paths, port)


def _one_port(branch, port, kwargs):
    cfg, paths = _context(branch, kwargs)
    return cfg, paths, _port(port)


def start_webapp(branch, port=8000, **kwargs):
    """
    Start the webapp of the current release on a port, like
    ``fab start_webapp:<branch>,port=<port>``. Returns once the port accepts
    connections. The port names the pid file
    (``shared/tmp/pids/webapp.<port>.pid``) and log (``shared/logs/webapp.<port>.log``).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.start_webapp staging 8001
    """
    cfg, paths, port = _one_port(branch, port, kwargs)
    return _locked(_start, cfg, paths, port)


def stop_webapp(branch, port=8000, **kwargs):
    """
    Stop the webapp on a port: ``stop_signal`` (default SIGTERM) to its
    process group, which gets ``stop_timeout`` seconds to finish its requests
    in flight before SIGKILL. Only a process this module started is ever signalled.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.stop_webapp staging 8001
    """
    cfg, paths, port = _one_port(branch, port, kwargs)
    return _locked(_stop, cfg, paths, port)


def restart_webapp(branch, port=8000, **kwargs):
    """
    Stop, then start, the webapp on a port (it then runs the current release).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.restart_webapp staging 8001
    """
    cfg, paths, port = _one_port(branch, port, kwargs)
    return _locked(_restart, cfg, paths, port)


_CLUSTER_VERBS = {"_start": "started", "_stop": "stopped", "_restart": "restarted"}


def _cluster(action, branch, ports, kwargs):
    cfg, paths = _context(branch, kwargs)
    ports = _ports(ports) or cfg["ports"]
    done = []
    # One port at a time, each serving again before the next one stops. The first
    # failure stops the roll: the ports after it keep running what they ran.
    for index, port in enumerate(ports):
        try:
            done.append(_locked(action, cfg, paths, port))
        except CommandExecutionError as exc:
            verb = _CLUSTER_VERBS.get(action.__name__, "handled")
            left = ports[index + 1 :]
            raise CommandExecutionError(
                f"{exc}\nstopped at port {port}: {verb} "
                f"{', '.join(str(r['port']) for r in done) or 'none'}; "
                f"left as they were: {', '.join(map(str, left)) or 'none'}",
                info={"port": port, "done": done, "left": left},
            ) from None
    return done


def start_webapp_cluster(branch, *ports, **kwargs):
    """
    Start the webapp on several ports (default: the configured ``ports``).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.start_webapp_cluster staging 8000 8001
    """
    return _cluster(_start, branch, ports, kwargs)


def stop_webapp_cluster(branch, *ports, **kwargs):
    """
    Stop the webapp on several ports (default: the configured ``ports``).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.stop_webapp_cluster staging 8000 8001
    """
    return _cluster(_stop, branch, ports, kwargs)


def restart_webapp_cluster(branch, *ports, **kwargs):
    """
    Restart the webapp on several ports, one port at a time (a rolling
    restart): each is serving again (accepts connections, the readiness check
    of ``start_webapp``) before the next one stops. A port that does not come
    back stops the roll: the ports after it keep running their old release, and
    the error names the port, the tail of its log, and the ports done and left.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.restart_webapp_cluster staging 8000 8001
    """
    return _cluster(_restart, branch, ports, kwargs)


def webapp_status(branch, port=None, **kwargs):
    """
    Which ports run the webapp: per port its pid, the release it runs from,
    whether that is the current release, uptime and whether it answers.
    Without a port: the configured ports and any other port with a pid file.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.webapp_status staging
    """
    cfg, paths = _context(branch, kwargs)
    if port is not None:
        ports = [_port(port)]
    else:
        found = []
        if os.path.isdir(paths.pids):
            for name in os.listdir(paths.pids):
                match = re.match(r"^webapp\.(\d+)\.pid$", name)
                if match:
                    found.append(int(match.group(1)))
        ports = sorted(set(cfg["ports"]) | set(found))
    current_name = _current_name_safe(paths)
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime", encoding="utf-8") as fh:
        boot_uptime = float(fh.read().split()[0])
    status = {}
    for p in ports:
        info = _ours(paths, p)
        if info is None:
            status[p] = {"running": False, "pid": None, "release": None, "current": False,
                         "uptime": None, "listening": False}  # fmt: skip
            continue
        status[p] = {
            "running": True,
            "pid": info["pid"],
            "release": info["release"],
            "current": info["release"] == current_name,
            "uptime": round(boot_uptime - int(info["started"]) / ticks, 1),
            "listening": _port_open(cfg["host"], p),
        }
    return status
