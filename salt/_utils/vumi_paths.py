"""
Every path of one environment, computed here and nowhere else.
"""

import logging
import os

from salt.exceptions import SaltInvocationError

import vumi_settings

log = logging.getLogger(__name__)

MANIFEST = "release.json"


class Paths:
    """Every path of one environment, computed here and nowhere else."""

    def __init__(self, cfg):
        self.app = cfg["app"]
        self._repo_tree = cfg.get("repo_tree")  # not a path: kept out of vumi.paths
        self.app_dir = os.path.join(cfg["base_dir"], cfg["app"])
        self.root = os.path.join(self.app_dir, vumi_settings.env_dirname(cfg["environment"]))
        self.name = vumi_settings.env_name(cfg)  # in files outside the tree: supervisor's programs, nginx's site
        # the webapps' logs, which supervisord (root) writes: root's folder, outside the user's tree
        self.webapp_logs = os.path.join(self.app_dir, ".logs", vumi_settings.env_dirname(cfg["environment"]))
        self.releases = os.path.join(self.root, "releases")
        self.failed = os.path.join(self.root, "failed")
        self.shared = os.path.join(self.root, "shared")
        self.logs = os.path.join(self.shared, "logs")
        self.tmp = os.path.join(self.shared, "tmp")
        # pip's and uv's caches: the environment's own, or a folder of the user's shared by its environments
        caches = cfg.get("cache_dir") or os.path.join(self.tmp, "cache")
        self.pip_cache = os.path.join(caches, "pip")
        self.uv_cache = os.path.join(caches, "uv")
        self.pids = os.path.join(self.tmp, "pids")
        self.repositories = os.path.join(self.shared, "repositories")
        self.repo = os.path.join(self.repositories, cfg["app"])
        self.virtualenvs = os.path.join(self.shared, "virtualenvs")
        self.current = os.path.join(self.root, "current")
        self.history = os.path.join(self.root, "history.log")
        self.history_old = os.path.join(self.root, "history.log.1")  # the rotated part
        self.lock = os.path.join(self.root, ".deploy.lock")
        self.frozen = os.path.join(self.root, "LOCKED")  # an operator's freeze (vumi.lock)
        self.held = os.path.join(self.root, "HELD")  # a fleet deploy's hold (vumi.orch.deploy)
        # while it exists nginx answers 503 with it (vumi.maintenance, a hook's maintenance: true)
        self.maintenance = os.path.join(self.root, "MAINTENANCE.html")
        # a few bytes held back: on a full disk, cleanup, rollback and lock still record what they did
        self.reserve = os.path.join(self.root, ".reserve")

    def tree(self):
        """The folders ``layout`` makes, parents first."""
        return [
            self.root, self.releases, self.shared, self.logs, self.repositories,
            self.tmp, os.path.join(self.tmp, "cache"), self.pids, self.virtualenvs,
        ] + [cache for cache in (self.pip_cache, self.uv_cache) if cache.startswith(self.root + os.sep)]  # fmt: skip

    def mode(self, folder):
        """A folder's mode in the tree: the logs may tell secrets, the rest is 0755."""
        return 0o750 if folder == self.logs else 0o755

    def release(self, name):
        vumi_settings.check_name(name, "release", vumi_settings.RELEASE_RE)
        return os.path.join(self.releases, name)

    def checkout(self, name):
        """The release's git checkout."""
        return os.path.join(self.release(name), self.app)

    def code(self, name):
        """The app's folder: the checkout, or its ``repo_tree`` subfolder."""
        return os.path.join(self.checkout(name), self._repo_tree) if self._repo_tree else self.checkout(name)

    def venv(self, name):
        return os.path.join(self.release(name), "ve")

    def current_code(self):
        """The app's folder reached through ``current``: a supervised webapp's working directory."""
        code = os.path.join(self.current, self.app)
        return os.path.join(code, self._repo_tree) if self._repo_tree else code

    def current_venv(self):
        return os.path.join(self.current, "ve")

    def manifest(self, name):
        return os.path.join(self.release(name), MANIFEST)

    def pidfile(self, port):
        return os.path.join(self.pids, f"webapp.{port}.pid")

    def logfile(self, port):
        """A supervised webapp's log (root's folder; ``log_link`` is the user's way to it)."""
        return os.path.join(self.webapp_logs, f"webapp.{port}.log")

    def log_link(self, port):
        """``shared/logs/webapp.<port>.log``: a link to the log, for the user; root never opens it."""
        return os.path.join(self.logs, f"webapp.{port}.log")

    def process_logfile(self, name, num=None):
        """A process's log (of its instance ``num`` when it runs several), in root's folder as the webapps'."""
        return os.path.join(self.webapp_logs, f"process.{name}.log" if num is None else f"process.{name}.{num}.log")

    def process_log_link(self, name, num=None):
        return os.path.join(self.logs, f"process.{name}.log" if num is None else f"process.{name}.{num}.log")


def trees_in(app_dir):
    """
    The environments with a tree in ``app_dir``: folders holding ``releases/`` whose
    name maps back to a valid environment (``topics~foo`` is ``topics/foo``).
    """
    found = []
    for name in sorted(os.listdir(app_dir)) if os.path.isdir(app_dir) else ():
        if name.startswith("."):  # .logs: the webapps' logs, root's
            continue
        env = name.replace("~", "/")
        try:
            if vumi_settings.env_dirname(env) == name and os.path.isdir(os.path.join(app_dir, name, "releases")):
                found.append(env)
        except SaltInvocationError:
            continue
    return found
