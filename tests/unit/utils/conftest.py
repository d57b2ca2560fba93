"""
One environment (``staging``) under ``tmp_path``, as the current user: its settings and
paths; and, for the helpers that run git, an upstream copy of the sample's repository and
Salt's own ``cmd.run_all`` (the one function of Salt's they are handed).
"""

import getpass
import types

import pytest
from saltfactories.utils.functional import Loaders

import vumi_layout
import vumi_paths
import vumi_settings
from support.helpers import clone_origin


@pytest.fixture
def cfg(tmp_path):
    return vumi_settings.merge("staging", {"base_dir": str(tmp_path / "srv"), "user": getpass.getuser()}, None, {})


@pytest.fixture
def paths(cfg):
    return vumi_paths.Paths(cfg)


@pytest.fixture(scope="module")
def salt_functions(minion_opts):
    loaders = Loaders(dict(minion_opts))
    yield {"cmd.run_all": loaders.modules.cmd.run_all}
    loaders.reset_state()


@pytest.fixture
def upstream(origin, tmp_path):
    return clone_origin(origin, tmp_path / "upstream")


@pytest.fixture
def git_cfg(cfg, upstream):
    """The environment's settings, its ``repo_url`` the test's upstream."""
    return dict(cfg, repo_url=str(upstream))


@pytest.fixture
def deploy_of(salt_functions):
    """What the git stages read of a deploy: its settings, paths, revision and release, its tree made."""

    def make(cfg, revision=None, release=None):
        cfg = dict(cfg, revision=vumi_settings.revision(revision))
        paths = vumi_paths.Paths(cfg)
        vumi_layout.ensure_tree(cfg, paths)
        return types.SimpleNamespace(salt=salt_functions, cfg=cfg, paths=paths, runas=None, revision=cfg["revision"],
                                     release=release, sha=None, cut=False)  # fmt: skip

    return make
