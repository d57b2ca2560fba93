#!/usr/bin/env python3
"""Turn the bundled sample app into a git repository that can be deployed.

Usable as a module (``make_repo``, ``build_wheel``, ``commit_file``) and as
a CLI::

    python sample/make_repo.py DEST [--branch NAME ...]

The repository holds a copy of ``sample/app`` (a real Django project served by
gunicorn) plus ``wheels/vumi_sample_lib-1.0-py3-none-any.whl`` (built from
``sample/lib`` without any build backend), committed on ``master``, with one
branch per deployment environment pointing at that commit. Stdlib only; git is
run with ``-c user.name/-c user.email`` so no global git config is needed.

Offline: given a wheelhouse (by default the checkout's ``.wheelhouse``, which
``scripts/bootstrap`` fills with Django, gunicorn and psycopg from the package
registry), the repository's requirements file installs from it alone
(``--no-index --find-links <wheelhouse>``); without one, from the index.
"""

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WHEELHOUSE = HERE.parent / ".wheelhouse"
REQUIREMENTS = "config/requirements.pip"
APP_DIR = HERE / "app"
LIB_DIR = HERE / "lib" / "vumi_sample_lib"
LIB_NAME = "vumi-sample-lib"
LIB_VERSION = "1.0"

GIT_USER = "vumi-salt sample"
GIT_EMAIL = "vumi-salt-sample@example.invalid"

# 1980-01-01 is the earliest timestamp a zip file can store.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_IGNORED = ("__pycache__", "*.pyc", "*.pyo", "tmp", "public", "*.sqlite", ".git")

__all__ = ["build_wheel", "make_repo", "commit_file", "git", "requirements"]


def git(repo, *args):
    """Run ``git -C repo ARGS`` and return its stripped stdout."""
    cmd = [
        "git",
        "-C",
        str(repo),
        "-c",
        "user.name=" + GIT_USER,
        "-c",
        "user.email=" + GIT_EMAIL,
        "-c",
        "commit.gpgsign=false",
        "-c",
        "core.autocrlf=false",
        # the tests commit, as root, to upstreams a throw-away deploy user owns
        "-c",
        "safe.directory=*",
    ]
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    result = subprocess.run(cmd + list(args), env=env, check=True, capture_output=True, text=True)
    return result.stdout.strip()


def _normalize(name):
    """Distribution name as used in wheel and dist-info file names."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _package_files(package_dir):
    package_dir = Path(package_dir)
    ignore = shutil.ignore_patterns(*_IGNORED)
    files = []
    for root, dirs, names in os.walk(package_dir):
        skip = ignore(root, dirs + names)
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in sorted(names):
            if name not in skip:
                files.append(Path(root, name))
    return sorted(files, key=lambda p: p.relative_to(package_dir).as_posix())


def _record_hash(data):
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_wheel(package_dir, name, version, out_dir):
    """Build ``<name>-<version>-py3-none-any.whl`` from a package directory.

    ``package_dir`` is the import package itself (its basename becomes the
    top-level package inside the wheel). The output is deterministic.
    Returns the path of the wheel.
    """
    package_dir = Path(package_dir)
    if not (package_dir / "__init__.py").is_file():
        raise ValueError("%s is not a Python package" % package_dir)
    dist = _normalize(name)
    dist_info = "%s-%s.dist-info" % (dist, version)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel_path = out_dir / ("%s-%s-py3-none-any.whl" % (dist, version))

    entries = []
    for path in _package_files(package_dir):
        rel = path.relative_to(package_dir).as_posix()
        entries.append(("%s/%s" % (package_dir.name, rel), path.read_bytes()))
    entries.append(
        (
            dist_info + "/METADATA",
            (
                "Metadata-Version: 2.1\n"
                "Name: %s\n"
                "Version: %s\n"
                "Summary: %s (built by vumi-salt sample/make_repo.py)\n" % (name, version, name)
            ).encode(),
        )
    )
    entries.append(
        (
            dist_info + "/WHEEL",
            (b"Wheel-Version: 1.0\nGenerator: vumi-salt-make_repo\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        )
    )
    entries.append((dist_info + "/top_level.txt", (package_dir.name + "\n").encode()))

    record_name = dist_info + "/RECORD"
    record = "".join("%s,%s,%d\n" % (arcname, _record_hash(data), len(data)) for arcname, data in entries)
    record += "%s,,\n" % record_name
    entries.append((record_name, record.encode()))

    tmp_path = wheel_path.with_name(wheel_path.name + ".tmp")
    with zipfile.ZipFile(tmp_path, "w") as zf:
        for arcname, data in entries:
            info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data, compresslevel=9)
    os.replace(tmp_path, wheel_path)
    return wheel_path


def requirements(wheelhouse=None):
    """The text of the repository's requirements file (what ``make_repo`` commits)."""
    wheelhouse = Path(wheelhouse) if wheelhouse else WHEELHOUSE
    text = (APP_DIR / REQUIREMENTS).read_text()
    if any(wheelhouse.glob("*.whl")):
        text = "--no-index\n--find-links %s\n%s" % (wheelhouse.absolute(), text)
    return text


def make_repo(dest, branches=("staging", "production"), extra_wheels=(), wheelhouse=None):
    """Create a non-bare git repository with the sample app at ``dest``.

    ``dest`` must not exist or be an empty directory. The tree is a copy of
    sample/app plus ``wheels/`` holding the vumi-sample-lib wheel and any
    ``extra_wheels`` (an iterable of ``(package_dir, name, version)``). It
    is committed on ``master`` and every name in ``branches`` is created
    pointing at that commit; ``master`` stays checked out. ``wheelhouse``
    (default: ``.wheelhouse`` of this checkout, if it holds wheels) is where
    the requirements install from, offline. Returns the absolute path of the
    repository.
    """
    dest = Path(dest).absolute()
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError("%s exists and is not empty" % dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(APP_DIR, dest, ignore=shutil.ignore_patterns(*_IGNORED), dirs_exist_ok=True)
    wheels = dest / "wheels"
    build_wheel(LIB_DIR, LIB_NAME, LIB_VERSION, wheels)
    for package_dir, name, version in extra_wheels:
        build_wheel(package_dir, name, version, wheels)
    (dest / REQUIREMENTS).write_text(requirements(wheelhouse))

    git(dest, "init", "-q", "-b", "master")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "Sample app %s" % LIB_VERSION)
    for branch in branches:
        if branch != "master":
            git(dest, "branch", branch, "master")
    return dest


def commit_file(repo, branch, relpath, content, message):
    """Commit ``content`` (str or bytes) to ``relpath`` on ``branch``.

    Checks ``branch`` out in ``repo`` (leaving it checked out), writes the
    file, commits it and returns the new commit's sha.
    """
    repo = Path(repo)
    git(repo, "checkout", "-q", branch)
    path = repo / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    git(repo, "add", "--", str(relpath))
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Create a git repository holding the sample app.")
    parser.add_argument("dest", help="directory to create (must be empty)")
    parser.add_argument(
        "--branch",
        dest="branches",
        action="append",
        metavar="NAME",
        help="branch to create (repeatable; default: staging and production)",
    )
    args = parser.parse_args(argv)
    branches = args.branches or ("staging", "production")
    try:
        path = make_repo(args.dest, branches=branches)
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        print("make_repo: %s" % (detail,), file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
