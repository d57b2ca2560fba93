"""
Fixtures shared by the three levels of tests: unit, functional (Salt's loader in the
test process, real daemons) and integration (a real salt-master, minions, sshd).

Everything a test makes lives under pytest's temp dirs (or, for a throw-away deploy
user, /tmp folders it can reach, removed after); every process a test starts is
stopped by the test (the ``webapps`` fixture stops what is left); the host guard
(``support.host``) fails a test that changes the host outside them.
"""

import contextlib
import logging
import pathlib
import sys
import types

import pytest
import salt._logging  # noqa: F401  (sets up the handlers we close at exit)
from saltfactories.plugins.event_listener import EventListener
from saltfactories.utils import random_string

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "sample"))

import make_repo as sample  # noqa: E402  (the bundled sample app's repo builder)
from support import (  # noqa: E402
    helpers,  # noqa: E402
    host,
    net,
    users,
)
from support.helpers import clone_origin, loaders_for  # noqa: E402  (needs sample/ on sys.path)
from support.supervisor import Supervisord  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--deploy-user", choices=("root", "unprivileged"), default="root",
        help="who the functional tests' environments belong to: root (as Salt runs), or a throw-away "
             "user of the session (the privilege drop of every command, where the README promises it)",
    )  # fmt: skip


def pytest_unconfigure(config):
    # Salt leaves a root log handler that errors at exit on a closed stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        if hasattr(handler, "sync_with_handlers"):
            # salt's deferred handler would flush its queue to the closed stream at exit
            handler.sync_with_handlers([logging.NullHandler()])
        root.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="session")
def salt_factories_config(tmp_path_factory):
    # log_server_host: salt-factories would listen on 0.0.0.0; tests only use loopback
    return {
        "root_dir": str(tmp_path_factory.mktemp("salt-root")),
        "log_server_host": "127.0.0.1",
    }


@pytest.fixture(scope="session")
def event_listener():
    """salt-factories' event listener, bound to loopback (its default is 0.0.0.0)."""
    listener = EventListener()
    listener.host = "127.0.0.1"
    listener.address = f"tcp://{listener.host}:{listener.port}"
    with listener:
        yield listener


def _host_untouched(what):
    before = host.state()
    yield
    changed = host.changes(before, host.state())
    assert not changed, f"{what} changed the host outside its temporary folders: {changed[:10]}"


@pytest.fixture(scope="session", autouse=True)
def host_untouched_by_the_session():
    """The session's own fixtures (supervisord, caches) leave the host as they found it."""
    yield from _host_untouched("the session")


@pytest.fixture(scope="module", autouse=True)
def host_untouched_by_the_module(request):
    """A module's fixtures (a throw-away user, a PostgreSQL cluster) are gone with it."""
    yield from _host_untouched(f"module {request.module.__name__}")


@pytest.fixture(autouse=True)
def host_untouched(request):
    """
    No test installs a package, starts a host service, writes a crontab, leaves a user
    or touches the bundle's default paths (/var/praekelt, /etc/supervisor, /etc/nginx):
    every test sets its own (tests/support/host.py lists what is watched).
    """
    yield from _host_untouched(request.node.nodeid)


@pytest.fixture(scope="session")
def minion_opts(salt_factories, tmp_path_factory):
    # no pillar: the bundle's pillar/ names /var/praekelt, and pillar would win
    # over the settings the tests give as minion options
    empty_pillar = tmp_path_factory.mktemp("empty-pillar")
    factory = salt_factories.salt_minion_daemon(
        random_string("vumi-functional-"),
        overrides={
            "file_client": "local",
            "file_roots": {"base": [str(REPO / "salt")]},
            "pillar_roots": {"base": [str(empty_pillar)]},
        },
    )
    return factory.config.copy()


@pytest.fixture(scope="session")
def origin(tmp_path_factory):
    """A pristine sample repository (staging, production, master); copied per test."""
    return sample.make_repo(tmp_path_factory.mktemp("origin") / "sampleapp")


@pytest.fixture(scope="session")
def deploy_user(request):
    """
    None: the environments are root's. With ``--deploy-user=unprivileged``: the pwd entry of
    a throw-away user of the session whom every environment of the ``vumi_config`` fixture
    belongs to (its trees in /tmp folders it can reach, its own pip/uv cache).
    """
    if request.config.getoption("--deploy-user") == "root":
        yield None
        return
    why_not = users.can_deploy_as_another_user()
    if why_not:
        pytest.fail(f"--deploy-user=unprivileged: {why_not}")
    with users.reachable_dir("vumi-deploy-user-") as top, users.throwaway_user("vumitest-", top / "home") as user:
        # its interpreter the system's, with uv beside it (as an operator installs it for every user)
        (top / "bin").mkdir()
        (top / "bin" / "python3").symlink_to(users.PYTHON)
        (top / "bin" / "uv").symlink_to(REPO / ".venv" / "bin" / "uv")
        # and Poetry (with its export plugin), from .venv's packages on the system's Python
        site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
        (top / "bin" / "poetry").write_text(
            f"#!{users.PYTHON}\nimport sys\nsys.path.append({str(site)!r})\n"
            "from poetry.console.application import main\nsys.exit(main())\n"
        )
        (top / "bin" / "poetry").chmod(0o755)
        yield types.SimpleNamespace(pw_name=user.pw_name, pw_uid=user.pw_uid, pw_gid=user.pw_gid,
                                    pw_dir=user.pw_dir, python=str(top / "bin" / "python3"))  # fmt: skip


@pytest.fixture(scope="session")
def make_top(tmp_path_factory, deploy_user):
    """
    ``make_top(name)``: a folder for a test module's environments, a temp dir or (with a
    deploy user) one that user can reach; those are removed at the end of the session.
    """
    with contextlib.ExitStack() as stack:
        yield lambda name: (tmp_path_factory.mktemp(name) if deploy_user is None
                            else stack.enter_context(users.reachable_dir(f"vumi-{name}-")))  # fmt: skip


@pytest.fixture
def test_top(deploy_user, tmp_path):
    """Where this test's upstream and environments live: its temp dir, or one the deploy user can reach."""
    if deploy_user is None:
        yield tmp_path
        return
    with users.reachable_dir("vumi-as-user-") as path:
        yield path


@pytest.fixture
def repo(origin, test_top, deploy_user):
    """This test's own upstream repository, so commits do not leak between tests (the deploy user's)."""
    return users.give(clone_origin(origin, test_top / "upstream"), deploy_user)


@pytest.fixture
def base_dir(test_top):
    path = test_top / "srv"
    path.mkdir()
    return path


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory):
    """
    One pip and uv cache for the session's environments deployed as root (setting
    ``cache_dir``, as an operator shares one between a user's environments): each
    test's fresh environment installs Django from a warm cache, not from the wheels.
    """
    helpers.SHARED_CACHE = str(tmp_path_factory.mktemp("caches"))
    return helpers.SHARED_CACHE


@pytest.fixture(scope="session")
def supervisord():
    """A real supervisord for the session (from .venv, its own config and socket), stopped at the end."""
    daemon = Supervisord().start()
    yield daemon
    daemon.remove()


@pytest.fixture
def supervisor(supervisord):
    """The session's supervisord, with no program of an earlier test left; cleared after this one."""
    supervisord.clear()
    yield supervisord
    supervisord.clear()


@pytest.fixture
def vumi_config(repo, base_dir, supervisor, deploy_user):
    """The ``vumi`` settings every functional test starts from (the ``loaders`` fixture's pillar)."""
    return {
        "base_dir": str(base_dir),
        "app": "vumi",
        "repo_url": str(repo),
        "ports": [],
        "start_timeout": 20,
        "stop_timeout": 5,
        "supervisor": supervisor.settings(),
        **helpers.owned_by(deploy_user),
    }


@pytest.fixture
def loaders(minion_opts, vumi_config, tmp_path):
    """
    Salt's loader of the bundle, ``vumi_config`` as pillar the way operators write it
    (``pillar/vumi.sls``, compiled by Salt), no ``vumi`` minion options.
    """
    with loaders_for(minion_opts, {}, helpers.settings_pillar(tmp_path / "vumi-pillar", vumi_config)) as loaders:
        yield loaders


@pytest.fixture
def vumi(loaders):
    """The execution module, loaded by Salt's loader."""
    return loaders.modules.vumi


@pytest.fixture
def free_port():
    """A loopback port nobody listens on (for now)."""
    return net.free_port


@pytest.fixture
def webapps(vumi, supervisor):
    """
    (env, port) pairs a test starts; at teardown supervisor drops every program of
    the test (their processes stop). The list stays for the tests that name them.
    """
    started = []
    yield started
    supervisor.clear()
