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
    cfg = {"python": sys.executable, "requirements": "config/requirements.pip", "pip_packages": []}
    before = vumi_virtualenv.requirements_hash(cfg, str(code))
    (code / "config" / "constraints.txt").write_text("six==1.17.0\n")
    after_include = vumi_virtualenv.requirements_hash(cfg, str(code))
    (code / "wheels" / "new-1.0-py3-none-any.whl").write_bytes(b"wheel")
    after_wheel = vumi_virtualenv.requirements_hash(cfg, str(code))
    assert len({before, after_include, after_wheel}) == 3


def test_a_missing_include_names_the_file(code, tmp_path):
    (code / "config" / "base.txt").write_text("-r missing.txt\n")
    with pytest.raises(CommandExecutionError, match="missing.txt not found"):
        vumi_virtualenv.uv_requirements(str(code), "config/requirements.pip", str(tmp_path / "uv"))
    assert not (tmp_path / "uv").exists()  # nothing written before the whole chain was read


def test_declared_packages_are_part_of_the_key(code):
    cfg = {"python": sys.executable, "requirements": "config/requirements.pip", "pip_packages": []}
    plain = vumi_virtualenv.requirements_hash(cfg, str(code))
    with_driver = vumi_virtualenv.requirements_hash(dict(cfg, pip_packages=["psycopg2-binary"]), str(code))
    assert plain != with_driver
