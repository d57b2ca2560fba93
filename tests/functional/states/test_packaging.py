"""
Modern Python apps deploy with ``repo_url`` alone: what to install is found in the code
(requirements.txt, pyproject.toml, uv.lock), the virtualenv is keyed by what decides the
dependencies (a code-only commit reuses it, a lock change builds one), and a second
``state.apply`` with nothing new changes nothing. flaskr, the Flask tutorial's app, goes
through a code deploy unchanged, with its instance folder shared and its database made once.

Real git repositories, real ``uv lock`` files, real virtualenvs filled from the
wheelhouse (pillar ``install:env`` points uv and pip at it, as at a private index),
real gunicorn under the session's supervisord.
"""

import functools
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

import make_repo as sample  # on sys.path thanks to tests/conftest.py
from support import apps, index, users
from support.helpers import env_root, http_get, release_dirs

ENV = "staging"


@pytest.fixture
def deploy(loaders, test_top, deploy_user, free_port, webapps):
    """``deploy(repo, **settings)``: ``state.apply vumi`` of ``repo`` on a port: (changed states, port)."""
    port = free_port()
    webapps.append((ENV, port))

    def apply(repo, **settings):
        settings.setdefault("install", {"env": apps.OFFLINE})
        pillar = {"branch": ENV, "vumi": {"repo_url": str(repo), "environments": {ENV: {"ports": [port]}}, **settings}}
        ret = loaders.modules.state.apply("vumi", pillar=pillar)
        assert not ret.errors and all(state.result is True for state in ret), "\n".join(
            str(s.comment) for s in ret if not s.result
        )
        return {state.id: state.changes for state in ret if state.changes}, port

    return apply


@pytest.fixture
def make(test_top, deploy_user):
    """``make(kind, *args)``: a repository of ``support.apps`` under the test's folder, the deploy user's."""
    return lambda kind, *args: users.give(getattr(apps, kind)(test_top / kind, *args), deploy_user)


@pytest.fixture
def index_url(tmp_path):
    """The wheelhouse as a package index on 127.0.0.1, for Poetry (which locks against an index, not a folder)."""
    with index.serve(apps.WHEELHOUSE, tmp_path / "index") as url:
        yield url


def venv_of(base_dir, release):
    return os.path.realpath(env_root(base_dir, ENV) / "releases" / release / "ve")


def installed(venv):
    """{package: version} installed in a virtualenv, as its own Python sees them."""
    out = subprocess.run([f"{venv}/bin/python", "-c", "import importlib.metadata as m, json; print(json.dumps("
                          "{d.metadata['Name'].lower(): d.version for d in m.distributions()}))"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return json.loads(out)


WITH_SIX = '    "flask>=3",\n    "gunicorn",\n    "six",'

#: each app, the pillar it needs besides repo_url, what the bundle finds in it, and a change of what it depends on
APPS = {
    "startproject": ({}, "requirements.txt", lambda repo: (repo / "requirements.txt").write_text(
        (repo / "requirements.txt").read_text() + "six\n")),  # fmt: skip
    "flask_pyproject": ({"wsgi_module": "hello:create_app()"}, "pyproject.toml", lambda repo: (
        repo / "pyproject.toml").write_text(apps.PYPROJECT.format(deps='    "flask>=3",\n    "gunicorn",\n    "six",'))),
    "uv_locked": ({"wsgi_module": "hello:create_app()"}, "uv.lock", lambda repo: (
        (repo / "pyproject.toml").write_text(apps.PYPROJECT.format(deps=WITH_SIX)), apps.lock(repo))),
    # the lock names the index, which the export hands to the installer: no install:env
    "poetry_locked": ({"wsgi_module": "hello:create_app()", "install": {}}, "poetry.lock", lambda repo, url: (
        apps.write_poetry_project(repo, url, WITH_SIX), apps.poetry_lock(repo))),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(APPS))
def test_an_app_deploys_with_what_it_has_and_a_second_apply_changes_nothing(deploy, make, base_dir, kind, request):
    settings, found, change_deps = APPS[kind]
    if kind == "poetry_locked":
        url = request.getfixturevalue("index_url")
        repo = make(kind, url)
        change_deps = functools.partial(change_deps, url=url)
    else:
        repo = make(kind)
    changed, port = deploy(repo, **settings)
    assert f"vumi-{ENV}-deployed" in changed
    (first,) = release_dirs(base_dir)
    status, body = http_get(port)
    assert status == 200, body
    venv = venv_of(base_dir, first)
    versions = installed(venv)
    if kind in ("uv_locked", "poetry_locked"):
        assert {k: versions.get(k) for k in apps.locked_versions(repo)} == apps.locked_versions(repo)
    else:
        assert versions["flask" if kind != "startproject" else "django"] == apps.wheel_version(
            "flask" if kind != "startproject" else "django"
        )
    assert "hello" not in versions  # the project's own code runs from the release, not from the virtualenv
    manifest = (env_root(base_dir, ENV) / "releases" / first / "release.json").read_text()
    assert f'"install_source": "{found}"' in manifest

    # nothing new: nothing changes, no release is cut
    assert deploy(repo, **settings)[0] == {}
    assert release_dirs(base_dir) == [first]

    # a code-only commit: a new release on the same virtualenv
    sample.commit_file(repo, apps.BRANCH, "NEWS", "code only\n", "a code change")
    assert f"vumi-{ENV}-deployed" in deploy(repo, **settings)[0]
    second = release_dirs(base_dir)[-1]
    assert second != first and venv_of(base_dir, second) == venv
    # what it depends on changes: a new virtualenv, with the new package
    change_deps(repo)
    sample.git(repo, "add", "--all")
    sample.git(repo, "commit", "--quiet", "-m", "depend on six")
    assert f"vumi-{ENV}-deployed" in deploy(repo, **settings)[0]
    third = release_dirs(base_dir)[-1]
    assert venv_of(base_dir, third) != venv and "six" in installed(venv_of(base_dir, third))
    assert http_get(port)[0] == 200


def test_pip_installs_a_pyproject_alone_too(deploy, make, base_dir):
    """``installer: pip``: the dependencies pyproject.toml declares, read by the bundle, installed by pip."""
    repo = make("flask_pyproject")
    changed, port = deploy(repo, installer="pip", wsgi_module="hello:create_app()")
    assert f"vumi-{ENV}-deployed" in changed and http_get(port)[1] == {"app": "hello", "version": 1}
    (release,) = release_dirs(base_dir)
    venv = venv_of(base_dir, release)
    assert installed(venv)["flask"] == apps.wheel_version("flask") and "hello" not in installed(venv)
    assert pathlib.Path(venv, ".vumi-complete").read_text().split()[1] == "pip"
    assert deploy(repo, installer="pip", wsgi_module="hello:create_app()")[0] == {}


def test_an_app_that_installs_itself_keeps_its_virtualenv_and_runs_each_releases_code(deploy, make, base_dir):
    """``.`` in requirements.txt (the app as a package): its dependencies key the virtualenv, not its code."""
    repo = make("flask_pyproject")
    sample.commit_file(repo, apps.BRANCH, "requirements.txt", "-e .\n", "install the app itself")
    changed, port = deploy(repo, wsgi_module="hello:create_app()")
    assert f"vumi-{ENV}-deployed" in changed and http_get(port)[1] == {"app": "hello", "version": 1}
    (first,) = release_dirs(base_dir)
    assert "flask" in installed(venv_of(base_dir, first))
    assert deploy(repo, wsgi_module="hello:create_app()")[0] == {}
    code = (repo / "hello" / "__init__.py").read_text().replace("VERSION = 1", "VERSION = 2")
    sample.commit_file(repo, apps.BRANCH, "hello/__init__.py", code, "version 2 of the code")
    deploy(repo, wsgi_module="hello:create_app()")
    second = release_dirs(base_dir)[-1]
    assert second != first and venv_of(base_dir, second) == venv_of(base_dir, first)
    assert http_get(port)[1] == {"app": "hello", "version": 2}  # the new release's own code


def post(port, path, fields):
    """POST a form; (status, Location) without following the redirect."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    data = urllib.parse.urlencode(fields).encode()
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", data=data, timeout=10) as resp:
            return resp.status, resp.headers.get("Location")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location")


def test_flaskr_unchanged_keeps_its_users_through_a_code_deploy(deploy, make, base_dir):
    repo = make("flaskr")
    settings = {
        "wsgi_module": "flaskr:create_app()",
        "pip_packages": ["gunicorn"],  # the tutorial serves with flask run; production adds a server
        "shared_dirs": ["logs", "tmp", "instance"],
        "settings": {"SECRET_KEY": "a-secret-of-the-operators"},
        "settings_path": "instance/config.py",
        "hooks": {"before_publish": [{"run": "flask --app flaskr init-db", "creates": "instance/flaskr.sqlite"}]},
    }
    changed, port = deploy(repo, **settings)
    assert f"vumi-{ENV}-deployed" in changed
    shared = env_root(base_dir, ENV) / "shared" / "instance"
    assert (shared / "flaskr.sqlite").is_file()
    assert "SECRET_KEY = 'a-secret-of-the-operators'" in (shared / "config.py").read_text()
    assert post(port, "/auth/register", {"username": "ada", "password": "lovelace"}) == (302, "/auth/login")
    (first,) = release_dirs(base_dir)

    sample.commit_file(repo, apps.BRANCH, "README.rst", "flaskr, deployed by vumi-salt\n", "a code change")
    changed, _ = deploy(repo, **settings)
    second = release_dirs(base_dir)[-1]
    assert second != first and venv_of(base_dir, second) == venv_of(base_dir, first)  # no virtualenv built
    # init-db did not run again (it drops every table): ada logs in on the new release
    assert post(port, "/auth/login", {"username": "ada", "password": "lovelace"}) == (302, "/")
    assert http_get(port, "/hello") == (200, "Hello, World!")


def test_a_python_version_is_found_or_named(loaders, deploy, make, base_dir):
    repo = make("flask_pyproject")
    have = ".".join(map(str, sys.version_info[:2]))  # the Python of the tests, on the host
    deploy(repo, python=have, wsgi_module="hello:create_app()")
    (release,) = release_dirs(base_dir)
    ran = subprocess.run([f"{venv_of(base_dir, release)}/bin/python", "--version"], capture_output=True, text=True)
    assert ran.stdout.startswith(f"Python {have}.")
    ret = loaders.modules.state.apply(
        "vumi",
        pillar={"branch": ENV, "vumi": {"repo_url": str(repo), "python": "3.19", "install": {"env": apps.OFFLINE}}},
    )
    failed = [s for s in ret if s.result is False]
    assert failed, ret.raw
    message = " ".join(s.comment for s in failed)
    assert re.search(r"vumi:python 3\.19: no Python 3\.19 that \S+ can run \(looked at uv python find, "
                     r"/usr/local/bin/python3\.19, /usr/bin/python3\.19, /bin/python3\.19, ~/\.pyenv/versions\); "
                     rf"found: .*{re.escape(have)} \(", message), message  # fmt: skip
    assert release_dirs(base_dir) == [release]
    # unset, the repository's .python-version decides
    sample.commit_file(repo, apps.BRANCH, ".python-version", f"{have}\n", "pin the interpreter")
    deploy(repo, python=None, wsgi_module="hello:create_app()")
    newest = release_dirs(base_dir)[-1]
    assert newest != release and json.loads(
        (env_root(base_dir, ENV) / "releases" / newest / "release.json").read_text()
    )["python"].startswith(f"{have}.")


def test_salts_own_interpreter_is_not_asked_of_a_user_who_cannot_run_it(deploy, make, base_dir, deploy_user):
    """With no python set, a deploy user who cannot run Salt's Python deploys on one it can, and nothing logs an ERROR."""
    if deploy_user is None:
        pytest.skip("a deploy user's test (--deploy-user=unprivileged)")
    if subprocess.run(["runuser", "-u", deploy_user.pw_name, "--", sys.executable, "-c", ""],
                      capture_output=True, check=False).returncode == 0:  # fmt: skip
        pytest.skip(f"the deploy user can run Salt's interpreter here ({sys.executable})")
    errors = []

    class Catch(logging.Handler):
        def emit(self, record):
            errors.append(self.format(record))

    catch = Catch(logging.ERROR)
    logging.getLogger().addHandler(catch)
    try:
        deploy(make("flask_pyproject"), python=None, wsgi_module="hello:create_app()")
    finally:
        logging.getLogger().removeHandler(catch)
    assert errors == []
    (release,) = release_dirs(base_dir)
    python = pathlib.Path(venv_of(base_dir, release)) / "bin" / "python"
    assert not os.path.realpath(python).startswith(os.path.dirname(os.path.realpath(sys.executable)))


def ghost_lock(repo, tmp_path):
    """The uv-locked app locked with a package of an index that is gone by the deploy."""
    (tmp_path / "ghost" / "ghostpkg").mkdir(parents=True)
    (tmp_path / "ghost" / "ghostpkg" / "__init__.py").write_text("")
    sample.build_wheel(tmp_path / "ghost" / "ghostpkg", "ghostpkg", "1.0", tmp_path / "ghost-index")
    (repo / "pyproject.toml").write_text(
        apps.PYPROJECT.format(deps='    "flask>=3",\n    "gunicorn",\n    "ghostpkg",')
    )
    subprocess.run([str(apps.UV), "lock", "--quiet", "--python", "python3"], cwd=repo, check=True, capture_output=True,
                   env=dict(os.environ, UV_PYTHON_DOWNLOADS="never", UV_OFFLINE="1",
                            UV_FIND_LINKS=f"{apps.WHEELHOUSE},{tmp_path / 'ghost-index'}"))  # fmt: skip
    (tmp_path / "ghost-index" / "ghostpkg-1.0-py3-none-any.whl").unlink()


#: a commit of each mistake onto the uv-locked app, and what the failed apply must say
MISTAKES = {
    "a lock out of date": (
        lambda repo, tmp: (repo / "pyproject.toml").write_text(apps.PYPROJECT.format(deps=WITH_SIX)),
        r"uv sync --locked \(uv\.lock\) failed \(exit \d+\): .*needs to be updated",
    ),
    "a package the index lacks": (ghost_lock, r"uv sync --locked \(uv\.lock\) failed \(exit \d+\): .*ghostpkg"),
    "a pyproject.toml that is not TOML": (
        lambda repo, tmp: (repo / "pyproject.toml").write_text("[project\nname = 'hello'\n"),
        r"stage 'virtualenv': pyproject\.toml is not valid TOML: ",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_packaging_mistake_is_named_and_the_live_release_stays(loaders, deploy, make, base_dir, tmp_path, mistake):
    commit, said = MISTAKES[mistake]
    repo = make("uv_locked")
    _, port = deploy(repo, wsgi_module="hello:create_app()")
    (good,) = release_dirs(base_dir)
    commit(repo, tmp_path)
    sample.git(repo, "add", "--all")
    sample.git(repo, "commit", "--quiet", "-m", mistake)
    ret = loaders.modules.state.apply("vumi", pillar={"branch": ENV, "vumi": {
        "repo_url": str(repo), "environments": {ENV: {"ports": [port]}}, "wsgi_module": "hello:create_app()",
        "install": {"env": apps.OFFLINE}}})  # fmt: skip
    message = "\n".join(str(s.comment) for s in ret if s.result is False)
    assert re.search(said, message, re.S), message
    print(f"\n{mistake}: {message.splitlines()[0][:600]}")
    assert "Traceback" not in message
    assert release_dirs(base_dir) == [good] and http_get(port)[0] == 200


@pytest.mark.parametrize(
    ("python", "said"),
    [
        ("2.7", "invalid python '2.7': virtualenvs are made with Python 3.8 or newer"),
        ("3.x", "invalid python '3.x': a version such as \"3.12\", or the absolute path of an interpreter"),
        (3.10, 'invalid python 3.1: quote the version (python: "3.1"); YAML reads 3.10 as the number 3.1'),
    ],
)
def test_a_python_that_is_no_version_is_refused_before_anything(loaders, make, base_dir, python, said):
    repo = make("flask_pyproject")
    ret = loaders.modules.state.apply("vumi", pillar={"branch": ENV, "vumi": {"repo_url": str(repo), "python": python}})
    message = "\n".join(str(s.comment) for s in ret if s.result is False)
    assert said in message, message
    assert release_dirs(base_dir) == [] and list(base_dir.iterdir()) == []
