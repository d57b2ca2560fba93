"""
What the SLS manages when pillar asks it to: ``vumi:manage_user: true`` makes each
environment's deploy user (a system account) before its tree, and the deploy then
runs as that user; ``supervisor:manage_service: true`` has Salt install and run
Debian's supervisor, which a test must not do to its host: a dry run (``test=True``)
shows that plan, and the host guard (tests/support/host.py) checks nothing happened.
"""

import os
import pathlib
import pwd
import secrets
import shutil
import subprocess
import tempfile

import pytest

from support.git_http import GitHTTP
from support.helpers import env_root, loaders_for, settings_pillar
from support.privileges import PYTHON, SKIPS
from support.users import remove_user

ENV = "staging"
TOKEN = "tok-manage-7c1e"


@pytest.fixture
def top():
    path = pathlib.Path(tempfile.mkdtemp(prefix="vumi-manage-", dir="/tmp"))  # a user can reach it
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def upstream(origin, top):
    """The sample over HTTP: a user that does not exist yet cannot own a local clone."""
    with GitHTTP.serving(origin, top / "git", "deploy", TOKEN) as srv:
        yield f"http://deploy:{TOKEN}@127.0.0.1:{srv.port}/app.git"


def apply(minion_opts, pillar_dir, **kwargs):
    with loaders_for(minion_opts, {}, pillar_dir) as loaders:
        ret = loaders.modules.state.apply("vumi", pillar={"branch": ENV}, **kwargs)
        assert not ret.errors, ret.errors
        return {s.id: s for s in ret}


def test_manage_user_makes_the_deploy_user_and_the_deploy_runs_as_it(minion_opts, supervisor, upstream, top):
    name = f"vumitest-{secrets.token_hex(3)}"
    settings = {
        "base_dir": str(top / "srv"), "repo_url": upstream, "user": name, "python": PYTHON, "ports": [],
        "supervisor": supervisor.settings(), "manage_user": True,
    }  # fmt: skip
    try:
        states = apply(minion_opts, settings_pillar(top / "pillar", settings))
        failed = {k: s.comment for k, s in states.items() if s.result is not True}
        assert not failed, failed
        user = pwd.getpwnam(name)
        assert user.pw_uid < 1000 and states[f"vumi-user-{name}"].changes  # a system account, made by the SLS
        root = env_root(top / "srv", ENV)
        assert os.stat(root / "current").st_uid == user.pw_uid == os.stat(root / "history.log").st_uid
        again = apply(minion_opts, top / "pillar")
        assert all(s.result is True and not s.changes for s in again.values()), {k: s.changes for k, s in again.items()}
    finally:
        home = pathlib.Path(f"/home/{name}")
        remove_user(name)
        shutil.rmtree(home, ignore_errors=True)  # user.present's home for the account
        subprocess.run(["groupdel", name], capture_output=True, check=False)


for _mark in SKIPS:  # root, useradd, a python3 with venv the user can run
    test_manage_user_makes_the_deploy_user_and_the_deploy_runs_as_it = _mark(
        test_manage_user_makes_the_deploy_user_and_the_deploy_runs_as_it
    )


def test_manage_service_is_a_plan_to_install_and_run_supervisor(minion_opts, supervisor, tmp_path):
    settings = {"base_dir": str(tmp_path / "srv"), "supervisor": dict(supervisor.settings(), manage_service=True)}
    states = apply(minion_opts, settings_pillar(tmp_path / "pillar", settings), test=True)
    installed, running = states["vumi-supervisor-installed"], states["vumi-supervisor-running"]
    # predicted, not done (the host guard checks dpkg's database is as it was)
    assert (installed.result is None and "supervisor" in installed.comment) or (
        installed.result is True and "already installed" in installed.comment  # a host that has it
    ), installed.comment
    # and then run it: Salt says it would (or, with no init system as here, that it is offline)
    assert running.result is None or "OFFLINE" in running.comment, running.comment
