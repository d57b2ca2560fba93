"""
What the failure, crash, concurrency and hostile-input tests share:
environments built fast (a virtualenv built once per module, copied into each
environment, where a deploy reuses it), salt-call in a subprocess with its own
config, and the checks an operator would make after an accident.
"""

import contextlib
import fcntl
import getpass
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest
import yaml
from saltfactories.utils.functional import Loaders

import make_repo as sample  # tests/conftest.py puts sample/ on sys.path
from support import helpers, tree, users
from support.helpers import alive, clone_origin, env_root, http_get, set_vumi_options  # noqa: F401  (clone_origin: for the test modules)
from support.net import free_port  # noqa: F401  (for the test modules)
from support.salt_config import masterless_minion  # noqa: F401  (for the test modules)
from support.tree import history  # noqa: F401  (for the test modules)

REPO = pathlib.Path(__file__).resolve().parents[2]
ME = getpass.getuser()
SALT_CALL = pathlib.Path(sys.executable).parent / "salt-call"


# --------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------


class ModuleLoaders:
    """
    One Salt loader per test module (building one costs seconds); each test
    swaps in its own ``vumi`` settings, which the module reads as minion options.
    """

    def __init__(self, minion_opts, top):
        pillar = top / "empty-pillar"
        pillar.mkdir(exist_ok=True)
        (pillar / "top.sls").write_text("base: {}\n")
        # no pillar: the bundle's pillar names /var/praekelt, and pillar would win
        opts = dict(minion_opts, vumi={}, pillar_roots={"base": [str(pillar)]}, cachedir=str(top / "salt-cache"))
        self.loaders = Loaders(opts)

    def use(self, settings):
        self.loaders.reset_state()
        set_vumi_options(self.loaders, settings)
        assert self.vumi.settings("staging")["base_dir"] == settings["base_dir"]
        return self.loaders

    @property
    def settings(self):
        """The ``vumi`` options the module reads now."""
        return self.loaders.modules.opts["vumi"]

    @property
    def vumi(self):
        return self.loaders.modules.vumi

    @property
    def states(self):
        return self.loaders.states.vumi

    def close(self):
        set_vumi_options(self.loaders, {})
        self.loaders.reset_state()


@pytest.fixture(scope="module")
def mod(minion_opts, origin, make_top, deploy_user, supervisord):
    """
    The module's loader and the virtualenv every environment here starts from (a fixture);
    ``owner``: whose environments they are (``deploy_user``: None, root's).
    """
    SUPERVISOR.update(supervisord.settings())
    OWNER.clear()
    OWNER.update(helpers.owned_by(deploy_user))
    top = make_top("failures")
    loaders = ModuleLoaders(minion_opts, top)
    try:
        seed = build_seed(loaders, top, origin, deploy_user)
        yield types.SimpleNamespace(loaders=loaders, seed=seed, origin=origin, owner=deploy_user)
    finally:
        loaders.close()
        OWNER.clear()


def serving(port):
    """(release, pid) of the webapp answering on ``port`` (the pid supervisor runs: gunicorn's master)."""
    body = helpers.answer(port)
    return body["release"], body["ppid"]


#: the session's supervisord (pillar ``supervisor``), set by the modules' ``mod`` fixtures
SUPERVISOR = {}
#: whose the module's environments are (``helpers.owned_by``), set by the ``mod`` fixtures
OWNER = {}


def base_settings(base_dir, repo, **more):
    # the module's deploy user, unless the test names its own (which keeps its own cache)
    owner = dict(OWNER) if "user" not in more else {}
    return dict(
        {
            "supervisor": dict(SUPERVISOR),
            "base_dir": str(base_dir),
            "app": "vumi",
            "repo_url": str(repo),
            "ports": [],
            "user": ME,
            "start_timeout": 20,
            "stop_timeout": 5,
            **owner,
        },
        **more,
    )


def build_seed(module_loaders, top, origin, owner=None):
    """Deploy once for real (as ``owner``, or root): its virtualenv seeds every other environment of the module."""
    repo = users.give(clone_origin(origin, top / "seed-upstream"), owner)
    base_dir = top / "seed-srv"
    base_dir.mkdir()
    module_loaders.use(base_settings(base_dir, repo))
    result = module_loaders.vumi.deploy("staging")
    return pathlib.Path(os.path.realpath(result["path"] + "/ve"))


def seed_venv(seed, base_dir, env="staging", owner=None):
    """
    The module's first virtualenv, made again in ``env``'s tree under its hash (``rebuild_venv``);
    the folders made for it ``owner``'s (a deploy user, or None: root's).
    """
    venv = rebuild_venv(seed, env_root(base_dir, env) / "shared" / "virtualenvs" / seed.name)
    users.give(env_root(base_dir, env), owner)  # base_dir and <base_dir>/vumi stay root's, as the bundle makes them
    return venv


def rebuild_venv(source, dest, find_links=()):
    """
    A virtualenv at ``dest`` with what ``source`` holds, made as the bundle makes one (uv, the
    same interpreter, offline from the wheelhouse, compiled, its completion marker last): a copy
    would not do, its scripts' first lines name ``source``'s python, which no deploy runs.
    ``find_links``: folders of the repository's own wheels (its ``wheels/``), beside the sample's.
    """
    source, dest = pathlib.Path(source), pathlib.Path(dest)
    uv = pathlib.Path(sys.executable).parent / "uv"
    env = dict(os.environ, UV_CACHE_DIR=os.path.join(helpers.SHARED_CACHE, "uv"), UV_PYTHON_DOWNLOADS="never")
    dest.parent.mkdir(parents=True, exist_ok=True)
    python = os.path.realpath(source / "bin" / "python")
    subprocess.run([str(uv), "venv", "--quiet", "--python", python, str(dest)], env=env, check=True)
    frozen = subprocess.run([str(uv), "pip", "freeze", "--python", str(source / "bin" / "python")],
                            env=env, check=True, capture_output=True, text=True).stdout  # fmt: skip
    requirements = dest / ".seeded"
    requirements.mkdir()
    # pip itself (in a virtualenv the stdlib's venv made) comes from ensurepip, not the wheelhouse: left out
    frozen = "".join(line for line in frozen.splitlines(True) if not line.lower().startswith(("pip==", "setuptools==")))
    (requirements / "requirements.txt").write_text(frozen)
    # the registry's packages from the wheelhouse, the sample's own library as its repository ships it
    sample.build_wheel(sample.LIB_DIR, sample.LIB_NAME, sample.LIB_VERSION, requirements)
    subprocess.run([str(uv), "pip", "install", "--quiet", "--no-index", "--find-links", str(REPO / ".wheelhouse"),
                    "--find-links", str(requirements), *(f"--find-links={f}" for f in find_links), "--compile-bytecode", "--python", str(dest / "bin" / "python"),
                    "-r", str(requirements / "requirements.txt")], env=env, check=True)  # fmt: skip
    shutil.rmtree(requirements)
    shutil.copy2(source / ".vumi-complete", dest / ".vumi-complete")
    return dest


# --------------------------------------------------------------------------
# What an operator checks
# --------------------------------------------------------------------------


def snapshot(top, skip=()):
    """Every path under ``top`` with its kind, mode and owner (``support.tree.snapshot``); ``skip`` left out."""
    return tree.snapshot(top, skip, level="owners")


def current_state(root):
    """What ``current`` is: ('link', target), ('dir',), ('other',) or None."""
    link = pathlib.Path(root) / "current"
    if link.is_symlink():
        return ("link", os.readlink(link))
    if link.is_dir():
        return ("dir",)
    if os.path.lexists(link):
        return ("other",)
    return None


def current_problem(root):
    """None if ``current`` is a link to a complete release with an intact virtualenv; else what is wrong."""
    root = pathlib.Path(root)
    state = current_state(root)
    if state is None:
        return "no current"
    if state[0] != "link":
        return f"current is {state}"
    target = state[1]
    name = os.path.basename(target)
    if target != f"releases/{name}":
        return f"current points at {target}"
    return release_problem(root, name)


def release_problem(root, name):
    """None if release ``name`` is whole (manifest naming it, intact virtualenv, code); else what is wrong."""
    release = pathlib.Path(root) / "releases" / name
    try:
        manifest = json.loads((release / "release.json").read_text())
    except (OSError, ValueError) as exc:
        return f"release {name} has no manifest: {exc}"
    if manifest.get("release") != name:
        return f"manifest of {name} names {manifest.get('release')}"
    venv = release / "ve"
    if not (venv / ".vumi-complete").is_file() or not os.access(venv / "bin" / "python", os.X_OK):
        return f"release {name} has no intact virtualenv"
    if not (release / "vumi" / "manage.py").is_file():
        return f"release {name} has no code"
    return None


def lock_free(root):
    """True if nobody holds the environment's deploy lock (a crashed holder never does)."""
    path = pathlib.Path(root) / ".deploy.lock"
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases it if we got it
    return True


def lock_holder(root):
    """The pid the lock file names (the holder writes it once it has the lock), or None."""
    try:
        return json.loads((pathlib.Path(root) / ".deploy.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def processes_under(path):
    """
    Pids of live processes whose working folder is under ``path`` (webapps of an
    environment), each webapp once: its top process (gunicorn's master), not its workers.
    """
    found = {}
    path = os.path.realpath(path)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if (cwd == path or cwd.startswith(path + "/")) and alive(int(pid)):
                with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
                    found[int(pid)] = int(fh.read().rsplit(")", 1)[1].split()[1])
    return sorted(pid for pid, parent in found.items() if parent not in found)


def kill_processes_under(path):
    for pid in processes_under(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def leftovers(root):
    """What a converged environment must not have: temporary links, half-made clones, stale git locks..."""
    root = pathlib.Path(root)
    found = [p.name for p in root.iterdir() if p.name.startswith("current.tmp-")]
    repos = root / "shared" / "repositories"
    found += [p.name for p in repos.iterdir() if ".clone-" in p.name] if repos.is_dir() else []
    git_dir = repos / "vumi" / ".git"
    for parent, dirs, files in os.walk(git_dir):
        dirs[:] = [d for d in dirs if d != "objects"]
        found += [os.path.join(parent, f) for f in files if f.endswith(".lock")]
    releases = root / "releases"
    for rel in releases.iterdir() if releases.is_dir() else []:
        if not (rel / "release.json").is_file():
            found.append(f"incomplete release {rel.name}")
    pids = root / "shared" / "tmp" / "pids"
    found += [p.name for p in pids.iterdir() if p.name.startswith("webapp.health.")] if pids.is_dir() else []
    if not lock_free(root):
        found.append("the deploy lock is held")
    return found


# --------------------------------------------------------------------------
# salt-call --local in a subprocess: its own config, the settings as minion options
# --------------------------------------------------------------------------


def salt_call_config(top, settings):
    """A masterless minion config under ``top``; ``settings`` become its ``vumi`` options (no pillar)."""
    conf, state, pillar = top / "conf", top / "salt-state", top / "pillar"
    for path in (conf, state, pillar):
        path.mkdir(parents=True, exist_ok=True)
    (pillar / "top.sls").write_text("base: {}\n")
    (conf / "minion").write_text(yaml.safe_dump(masterless_minion(state, pillar, "vumi-crash-", vumi=settings)))
    # one call first: salt-calls started together would race to create the folders it makes
    warm = finish(salt_call(conf, "test.true"))
    assert warm.returncode == 0, warm.text
    return conf


def salt_call(conf, *args, cwd=None):
    """Start ``salt-call --local`` in its own process group (so that a test can SIGKILL all of it)."""
    return subprocess.Popen(  # pylint: disable=consider-using-with
        [str(SALT_CALL), "--local", "-c", str(conf), "--out=json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(cwd or conf),
        start_new_session=True,
    )


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    try:
        data = json.loads(out)["local"] if out.strip() else None
    except ValueError:
        data = out
    return types.SimpleNamespace(returncode=proc.returncode, data=data, stderr=err, text=f"{out}\n{err}")


def wait_for(predicate, timeout=30.0, interval=0.0005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


# --------------------------------------------------------------------------
# Per-group figures for the report (printed with pytest -s)
# --------------------------------------------------------------------------


class Tally:
    def __init__(self):
        self.groups = {}

    def add(self, group, current_valid, note=None):
        cases, valid, notes = self.groups.get(group, (0, 0, []))
        if note:
            notes.append(note)
        self.groups[group] = (cases + 1, valid + bool(current_valid), notes)

    def report(self):
        lines = []
        for group, (cases, valid, notes) in self.groups.items():
            lines.append(f"[issue5] {group}: {cases} cases, {valid} left current valid")
            lines.extend(f"[issue5]   {note}" for note in notes)
        return "\n".join(lines)
