"""
Small helpers the tests share: what a user would look at (HTTP answers, the
tree, processes), and the setup several test modules make alike (an upstream
clone of the sample, a pillar tree over the bundle's own, Salt's loader).
"""

import contextlib
import json
import logging
import os
import pathlib
import types
import urllib.error
import urllib.request

from saltfactories.utils.functional import Loaders

import make_repo as sample  # on sys.path thanks to tests/conftest.py
from support import users

REPO = pathlib.Path(__file__).resolve().parents[2]

#: the session's pip and uv cache (setting ``cache_dir``), set by tests/conftest.py
SHARED_CACHE = None


def owned_by(user):
    """The settings that make an environment ``user``'s (a pwd entry; None: root's, with the session's cache)."""
    if user is None:
        return {"cache_dir": SHARED_CACHE}
    return {"user": user.pw_name, "python": getattr(user, "python", users.PYTHON), "cache_dir": f"{user.pw_dir}/cache"}


def http_get(port, path="/", timeout=5):
    """GET from the webapp on 127.0.0.1: (status, body as JSON when it is JSON, else text)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            status, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def answer(port, env=None):
    """What the sample webapp on ``port`` says of itself (release, revision, env, port, ppid...), asserting a 200."""
    status, body = http_get(port)
    assert status == 200, (port, body)
    assert body["port"] == port and (env is None or body["env"] == env), (port, env, body)
    return body


def env_root(base_dir, env="staging", app="vumi"):
    return pathlib.Path(base_dir) / app / env.replace("/", "~")


def release_dirs(base_dir, env="staging"):
    releases = env_root(base_dir, env) / "releases"
    return sorted(p.name for p in releases.iterdir()) if releases.is_dir() else []


def current_target(base_dir, env="staging"):
    link = env_root(base_dir, env) / "current"
    return os.readlink(link) if link.is_symlink() else None


def alive(pid):
    """True if the process exists and has not exited (a zombie has exited)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# --------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------


def clone_origin(origin, dest):
    """A clone of the pristine sample repository at ``dest``, with local staging and production branches."""
    sample.git(origin.parent, "clone", "--quiet", "--no-hardlinks", str(origin), str(dest))
    for branch in ("staging", "production"):
        sample.git(dest, "branch", "--quiet", branch, f"origin/{branch}")
    return dest


def write_override(pillar_dir, override):
    """``tests.sls`` of a ``pillar_tree``: the ``vumi`` settings ``override`` (merged last, so it wins)."""
    (pathlib.Path(pillar_dir) / "tests.sls").write_text(json.dumps({"vumi": override}))  # JSON is YAML


def pillar_tree(path, override=None, envs=("staging", "production")):
    """
    A pillar tree at ``path`` like scripts/demo's: the bundle's own pillar files
    (``pillar/vumi``, linked) for ``envs``, then ``tests.sls`` with the ``vumi``
    settings ``override`` (written later with ``write_override`` when None).
    """
    path = pathlib.Path(path)
    path.mkdir()
    (path / "vumi").symlink_to(REPO / "pillar" / "vumi")
    (path / "top.sls").write_text(
        "base:\n  '*':\n    - vumi.defaults\n" + "".join(f"    - vumi.{env}\n" for env in envs) + "    - tests\n"
    )
    if override is not None:
        write_override(path, override)
    return path


def settings_pillar(path, vumi):
    """A pillar tree at ``path`` whose one file, ``vumi.sls``, holds the ``vumi`` settings, for every minion."""
    path = pathlib.Path(path)
    path.mkdir()
    (path / "top.sls").write_text("base:\n  '*':\n    - vumi\n")
    (path / "vumi.sls").write_text(json.dumps({"vumi": vumi}, indent=2))  # JSON is YAML
    return path


def sls_pillar(supervisor, **pillar):
    """
    The pillar of a state run whose settings are minion options: ``map.jinja`` reads
    pillar alone, so the supervisor the test started is named there too (without it,
    ``manage_service`` is on, and Salt would install and start the host's supervisor).
    """
    vumi = dict(pillar.pop("vumi", None) or {}, supervisor=dict(supervisor, manage_service=False))
    return dict(pillar, vumi=vumi)


def set_vumi_options(loaders, settings, reload=True):
    """
    Make ``settings`` the ``vumi`` minion options the modules of ``loaders`` read: the
    loaders' options and the execution modules' loader's own copy (Salt 3006 copies
    the options again when it builds a loader; 3008 shares them).
    """
    copies = {id(d): d for d in (loaders.opts["vumi"], loaders.modules.opts["vumi"])}
    for copy in copies.values():
        copy.clear()
        copy.update(settings)
    stale = "base_dir" in settings and loaders.modules.vumi.settings("default")["base_dir"] != settings["base_dir"]
    if stale and reload:
        # Salt 3006: a state.apply through these loaders left the module bound to older options
        loaders.reload_all()
        set_vumi_options(loaders, settings, reload=False)


@contextlib.contextmanager
def loaders_for(minion_opts, vumi, pillar_dir=None, **opts):
    """
    Salt's loader for ``minion_opts`` with the ``vumi`` settings as minion options
    and ``pillar_dir``'s pillar (None: the minion's own), reset at exit.
    """
    if pillar_dir is not None:
        opts["pillar_roots"] = {"base": [str(pillar_dir)]}
    loaders = Loaders(dict(minion_opts, vumi=vumi, **opts))
    try:
        yield loaders
    finally:
        loaders.reset_state()


@contextlib.contextmanager
def module_env(minion_opts, origin, top, env="staging", owner=None, **settings):
    """
    An environment of a test module's own under ``top``: its upstream clone, its
    base_dir and a loader whose ``vumi`` settings are minion options alone (the
    bundle's pillar, base_dir /var/praekelt, would win over them, so the pillar
    roots are empty). ``settings`` are added to base_dir, app, repo_url and ports.
    ``owner``: the deploy user whose environment it is (the ``deploy_user`` fixture).
    """
    top = pathlib.Path(top)
    repo = users.give(clone_origin(origin, top / "upstream"), owner)
    base_dir = top / "srv"
    base_dir.mkdir()
    config = {"base_dir": str(base_dir), "app": "vumi", "repo_url": str(repo), "ports": [], **owned_by(owner),
              **settings}  # fmt: skip
    no_pillar = top / "pillar"
    no_pillar.mkdir()
    with loaders_for(minion_opts, config, no_pillar) as loaders:
        vumi = loaders.modules.vumi
        assert vumi.settings(env)["base_dir"] == str(base_dir)
        root = env_root(base_dir, env)
        yield types.SimpleNamespace(
            loaders=loaders, vumi=vumi, config=config, repo=repo, base_dir=base_dir, root=root, top=top
        )


def stop_webapps(vumi, env="staging"):
    """Safety net: stop whatever still has a running pid file in ``env``."""
    for port, info in vumi.webapp_status(env).items():
        if info["running"]:
            vumi.stop_webapp(env, port)


class Warnings(logging.Handler):
    """The WARNING (and worse) records of a logger, as text: ``logger.addHandler(Warnings())``."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.text = ""

    def emit(self, record):
        self.text += record.getMessage() + "\n"
