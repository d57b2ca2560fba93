"""
Python apps packaged the ways teams package them today, made in the tests from the
wheelhouse's real packages, each a git repository of its own with a ``staging`` branch:
a ``django-admin startproject`` site with a ``requirements.txt``, a Flask app with only a
``pyproject.toml``, one locked by ``uv lock``, and flaskr, the Flask tutorial's app, taken
unchanged from Flask's source archive. Nothing here writes a requirements file for the last
three: what the deploy installs is what the bundle finds in them.
"""

import os
import pathlib
import subprocess
import tarfile
import zipfile

import make_repo as sample

REPO = pathlib.Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".wheelhouse"
UV = REPO / ".venv" / "bin" / "uv"
BRANCH = "staging"

#: how the deploys reach the wheelhouse: the installers' own variables (pillar ``install:env``),
#: as an operator points them at a private index; no app carries an index of its own
OFFLINE = {"UV_OFFLINE": "1", "UV_FIND_LINKS": str(WHEELHOUSE), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE)}

FLASK_APP = """\
from flask import Flask


def create_app():
    app = Flask(__name__)

    @app.route("/")
    def index():
        return {"app": "hello", "version": VERSION}

    return app


VERSION = 1
"""

PYPROJECT = """\
[project]
name = "hello"
version = "1.0.0"
description = "A Flask app packaged with pyproject.toml alone."
requires-python = ">=3.11"
dependencies = [
{deps}
]

[build-system]
requires = ["flit_core<4"]
build-backend = "flit_core.buildapi"
"""


def wheel_version(name):
    """The version of ``name`` the wheelhouse holds."""
    (found,) = [p.name.split("-")[1] for p in WHEELHOUSE.glob("*.whl") if p.name.split("-")[0].lower() == name]
    return found


def _init(dest):
    dest.mkdir(parents=True)
    sample.git(dest, "init", "--quiet", "--initial-branch", BRANCH)
    return dest


def _commit(repo, message):
    sample.git(repo, "add", "--all")
    sample.git(repo, "commit", "--quiet", "-m", message)
    return sample.git(repo, "rev-parse", "HEAD")


def startproject(dest):
    """``django-admin startproject mysite`` (Django from its wheel) with gunicorn in a requirements.txt."""
    repo = _init(dest)
    wheels = {name: next(WHEELHOUSE.glob(f"{name}-*.whl")) for name in ("django", "asgiref", "sqlparse")}
    # Django runs from its wheel; its project template, a folder it walks, is taken out of it
    template = dest.parent / "project_template"
    with zipfile.ZipFile(wheels["django"]) as whl:
        for name in whl.namelist():
            if name.startswith("django/conf/project_template/"):
                whl.extract(name, template)
    subprocess.run(["python3", "-m", "django", "startproject", f"--template={template}/django/conf/project_template",
                    "mysite", str(repo)], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=":".join(map(str, wheels.values()))))  # fmt: skip
    assert (repo / "mysite" / "wsgi.py").is_file()
    (repo / "requirements.txt").write_text(f"Django=={wheel_version('django')}\ngunicorn\n")
    _commit(repo, "django-admin startproject mysite")
    return repo


def flask_pyproject(dest):
    """A Flask app whose only packaging is a pyproject.toml (its dependencies unpinned)."""
    repo = _init(dest)
    (repo / "hello").mkdir()
    (repo / "hello" / "__init__.py").write_text(FLASK_APP)
    (repo / "pyproject.toml").write_text(PYPROJECT.format(deps='    "flask>=3",\n    "gunicorn",'))
    _commit(repo, "a Flask app")
    return repo


def lock(repo):
    """``uv lock`` against the wheelhouse, as a team locks against its index."""
    subprocess.run([str(UV), "lock", "--quiet", "--python", "python3"], cwd=repo, check=True, capture_output=True,
                   env=dict(os.environ, UV_PYTHON_DOWNLOADS="never", **OFFLINE))  # fmt: skip


def uv_locked(dest):
    """The Flask app with a uv.lock made by ``uv lock``."""
    repo = flask_pyproject(dest)
    lock(repo)
    _commit(repo, "uv lock")
    return repo


POETRY_SOURCE = """
[tool.poetry]
package-mode = false

[[tool.poetry.source]]
name = "ours"
url = "{url}"
priority = "primary"
"""


def poetry_lock(repo):
    """``poetry lock`` against the index its pyproject.toml names (the tests' own, on 127.0.0.1)."""
    env = dict(os.environ, POETRY_CACHE_DIR=str(pathlib.Path(repo).parent / "poetry-cache"), POETRY_NO_INTERACTION="1")
    subprocess.run([str(REPO / ".venv" / "bin" / "poetry"), "lock"], cwd=repo, check=True, capture_output=True, env=env)


def poetry_locked(dest, index_url, deps='    "flask>=3",\n    "gunicorn",'):
    """The Flask app as a Poetry project (package-mode off), locked by ``poetry lock`` against ``index_url``."""
    repo = _init(dest)
    (repo / "hello").mkdir()
    (repo / "hello" / "__init__.py").write_text(FLASK_APP)
    write_poetry_project(repo, index_url, deps)
    poetry_lock(repo)
    _commit(repo, "a Poetry app, locked")
    return repo


def write_poetry_project(repo, index_url, deps):
    text = PYPROJECT.format(deps=deps).split("[build-system]")[0] + POETRY_SOURCE.format(url=index_url)
    (repo / "pyproject.toml").write_text(text)


def locked_versions(repo):
    """{package: version} of a uv.lock or a poetry.lock, the project itself left out."""
    import tomllib  # pylint: disable=import-outside-toplevel

    repo = pathlib.Path(repo)
    lockfile = repo / "uv.lock" if (repo / "uv.lock").exists() else repo / "poetry.lock"
    data = tomllib.loads(lockfile.read_text())
    return {p["name"]: p["version"] for p in data["package"] if "editable" not in p.get("source", {})}


def flaskr(dest):
    """flaskr, the Flask tutorial's app, unchanged: Flask's source archive's examples/tutorial."""
    (archive,) = (WHEELHOUSE / "sdist").glob("flask-*.tar.gz")
    repo = _init(dest)
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0] + "/examples/tutorial/"
        members = [m for m in tar.getmembers() if m.name.startswith(top) and m.isfile()]
        for member in members:
            member.name = member.name[len(top) :]
        tar.extractall(repo, members=members, filter="data")
    _commit(repo, f"flaskr from {archive.name}")
    return repo
