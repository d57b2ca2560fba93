"""
The requirements reader the virtualenv stage shares between its hash and uv
(``salt/_utils/vumi_virtualenv.py``), imported as the execution module imports it.

uv takes no relative local path in a requirements file; pip resolves one near
the file, else in the working folder (the code folder). The copy made for uv
must name the same places pip would use, so both installers build the same thing.
"""

import pathlib
import sys

import pytest
from salt.exceptions import CommandExecutionError

import vumi_virtualenv


@pytest.fixture
def code(tmp_path):
    code = tmp_path / "code"
    (code / "config").mkdir(parents=True)
    (code / "wheels").mkdir()
    (code / "config" / "local").mkdir()
    (code / "pkg").mkdir()
    (code / "config" / "requirements.pip").write_text(
        "--no-index\n"
        "--find-links wheels          # not near the file: the code folder's\n"
        "--find-links=local\n"
        "-r base.txt\n"
        "./pkg\n"
        "Django==5.1 ; python_version >= '3.10'\n"
        "requests @ https://example.invalid/requests.whl\n"
    )
    (code / "config" / "base.txt").write_text("-c constraints.txt\nsix\n")
    (code / "config" / "constraints.txt").write_text("six==1.16.0\n")
    return code


def test_uv_copy_names_every_local_path_absolutely_as_pip_resolves_it(code, tmp_path):
    top = vumi_virtualenv.uv_requirements(str(code), "config/requirements.pip", str(tmp_path / "uv"))
    lines = pathlib.Path(top).read_text().splitlines()
    assert lines[0] == "--no-index"
    assert lines[1] == f"--find-links {code / 'wheels'}"  # relative to the working folder
    assert lines[2] == f"--find-links={code / 'config' / 'local'}"  # near the file wins
    include = lines[3].split()
    assert include[0] == "-r" and pathlib.Path(include[1]).parent == tmp_path / "uv"
    assert lines[4] == str(code / "pkg")
    assert lines[5] == "Django==5.1 ; python_version >= '3.10'"  # requirements stay as they are
    assert lines[6] == "requests @ https://example.invalid/requests.whl"
    base = pathlib.Path(include[1]).read_text().splitlines()
    constraint = base[0].split()
    assert constraint[0] == "-c" and pathlib.Path(constraint[1]).read_text() == "six==1.16.0\n"
    assert base[1] == "six"


def test_the_hash_follows_includes_and_local_paths(code):
    cfg = dict(CFG, requirements="config/requirements.pip")
    before = vumi_virtualenv.requirements_hash(cfg, str(code), PYTHON)
    (code / "config" / "constraints.txt").write_text("six==1.17.0\n")
    after_include = vumi_virtualenv.requirements_hash(cfg, str(code), PYTHON)
    (code / "wheels" / "new-1.0-py3-none-any.whl").write_bytes(b"wheel")
    after_wheel = vumi_virtualenv.requirements_hash(cfg, str(code), PYTHON)
    assert len({before, after_include, after_wheel}) == 3


def test_a_missing_include_names_the_file(code, tmp_path):
    (code / "config" / "base.txt").write_text("-r missing.txt\n")
    with pytest.raises(CommandExecutionError, match="missing.txt not found"):
        vumi_virtualenv.uv_requirements(str(code), "config/requirements.pip", str(tmp_path / "uv"))
    assert not (tmp_path / "uv").exists()  # nothing written before the whole chain was read


def test_declared_packages_are_part_of_the_key(code):
    cfg = dict(CFG, requirements="config/requirements.pip")
    plain = vumi_virtualenv.requirements_hash(cfg, str(code), PYTHON)
    with_driver = vumi_virtualenv.requirements_hash(dict(cfg, pip_packages=["psycopg2-binary"]), str(code), PYTHON)
    assert plain != with_driver


CFG = {"requirements": None, "pip_packages": [], "install": {"extras": [], "groups": [], "env": {}}}
PYTHON = (sys.executable, "3.11.7")
PYPROJECT = """[project]
name = "app"
version = "1.0"
description = "an app"
requires-python = ">=3.10"
dependencies = ["flask>=3"]

[project.optional-dependencies]
pg = ["psycopg"]
"""


@pytest.mark.parametrize(
    ("files", "found"),
    [
        (["uv.lock", "pyproject.toml", "requirements.txt"], ("uv", "uv.lock")),
        (["poetry.lock", "pyproject.toml", "requirements.txt"], ("poetry", "poetry.lock")),
        (["uv.lock", "requirements.txt"], ("requirements", "requirements.txt")),  # a lock alone is not a project
        (["requirements.txt", "config/requirements.pip", "pyproject.toml"], ("requirements", "requirements.txt")),
        (["config/requirements.pip", "pyproject.toml"], ("requirements", "config/requirements.pip")),
        (["pyproject.toml"], ("pyproject", "pyproject.toml")),
    ],
)
def test_what_to_install_is_found_in_the_code(tmp_path, files, found):
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert vumi_virtualenv.source(CFG, str(tmp_path)) == found
    # the setting wins, its kind by its name
    assert vumi_virtualenv.source(dict(CFG, requirements="deps/uv.lock"), str(tmp_path)) == ("uv", "deps/uv.lock")
    assert vumi_virtualenv.source(dict(CFG, requirements="reqs.in"), str(tmp_path)) == ("requirements", "reqs.in")


def test_nothing_to_install_names_what_was_looked_for(tmp_path):
    with pytest.raises(CommandExecutionError) as exc:
        vumi_virtualenv.source(CFG, str(tmp_path))
    assert str(exc.value) == (
        f"nothing to install in {tmp_path}: none of uv.lock, poetry.lock, requirements.txt, config/requirements.pip, "
        "pyproject.toml is there (a lockfile counts beside a pyproject.toml); set requirements"
    )


def keyed_by_dependencies(tmp_path, **files):
    """The key of a code folder of ``files`` and an app.py, which a change of app.py alone keeps."""
    for name, text in files.items():
        (tmp_path / name.replace("_", ".")).write_text(text)
    (tmp_path / "app.py").write_text("print('v1')\n")
    first = vumi_virtualenv.requirements_hash(CFG, str(tmp_path), PYTHON)
    (tmp_path / "app.py").write_text("print('v2')\n")
    assert vumi_virtualenv.requirements_hash(CFG, str(tmp_path), PYTHON) == first
    return first


def test_a_lockfile_keys_the_virtualenv_and_the_code_does_not(tmp_path):
    first = keyed_by_dependencies(tmp_path, pyproject_toml=PYPROJECT, uv_lock="version = 1\n")
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.replace('version = "1.0"', 'version = "1.1"')
                                             .replace("an app", "the app"))  # fmt: skip
    assert vumi_virtualenv.requirements_hash(CFG, str(tmp_path), PYTHON) == first  # code, version, description
    (tmp_path / "uv.lock").write_text("version = 1\n# locked anew\n")
    relocked = vumi_virtualenv.requirements_hash(CFG, str(tmp_path), PYTHON)
    assert relocked != first
    with_extra = vumi_virtualenv.requirements_hash(dict(CFG, install={"extras": ["pg"], "groups": [], "env": {}}),
                                                   str(tmp_path), PYTHON)  # fmt: skip
    other_python = vumi_virtualenv.requirements_hash(CFG, str(tmp_path), (sys.executable, "3.12.1"))
    assert len({relocked, with_extra, other_python}) == 3


def test_a_pyproject_alone_is_keyed_by_its_dependencies(tmp_path):
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    first = vumi_virtualenv.requirements_hash(CFG, str(tmp_path), PYTHON)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.replace('version = "1.0"', 'version = "2.0"'))
    assert vumi_virtualenv.requirements_hash(CFG, str(tmp_path), PYTHON) == first
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.replace('"flask>=3"', '"flask>=3", "click"'))
    assert vumi_virtualenv.requirements_hash(CFG, str(tmp_path), PYTHON) != first


def test_a_pyproject_that_is_not_toml_is_named(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project\nname = 'app'\n")
    with pytest.raises(CommandExecutionError, match=r"^pyproject.toml is not valid TOML: "):
        vumi_virtualenv.requirements_hash(CFG, str(tmp_path), PYTHON)


def test_a_line_that_installs_the_app_itself_is_keyed_and_installed_as_its_dependencies(tmp_path):
    first = keyed_by_dependencies(tmp_path, pyproject_toml=PYPROJECT, requirements_txt="gunicorn\n-e .[pg]\n")
    copy = vumi_virtualenv.uv_requirements(str(tmp_path), "requirements.txt", str(tmp_path / "copies"))
    assert pathlib.Path(copy).read_text() == "gunicorn\nflask>=3\npsycopg\n"
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.replace('pg = ["psycopg"]', 'pg = ["psycopg[binary]"]'))
    assert vumi_virtualenv.requirements_hash(CFG, str(tmp_path), PYTHON) != first
