"""
Throw-away deploy users and the folders they can reach.

Users are made with ``useradd --system`` under a prefix the host guard leaves out of its
record (``support.host.THROWAWAY``), and removed by the fixture that made them, with
whatever still runs as them. Their trees live in ``/tmp/vumi-*`` folders of mode 0755:
pytest's own temp dirs (``/tmp/pytest-of-root``, 0700) are root's alone.
"""

import contextlib
import os
import pathlib
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time

#: the interpreter a deploy user runs (the project's is under /root, which they cannot reach)
PYTHON = "/usr/bin/python3"


def can_deploy_as_another_user():
    """None, or why this machine cannot run a deploy as a throw-away user."""
    if os.geteuid() != 0:
        return "only root can deploy as another user"
    if not shutil.which("useradd") or not shutil.which("userdel"):
        return "useradd/userdel are not installed"
    probe = subprocess.run([PYTHON, "-c", "import ensurepip, venv"], capture_output=True, check=False)
    if probe.returncode != 0:
        return "python3-venv is not installed (.ci/run installs it)"
    return None


@contextlib.contextmanager
def reachable_dir(prefix="vumi-"):
    """A fresh folder in /tmp that every user can traverse (0755), removed after."""
    path = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def throwaway_user(prefix="vumitest-", home=None):
    """A system user (its home ``home``, made and owned by it, or none): its pwd entry; removed after."""
    name = f"{prefix}{secrets.token_hex(3)}"
    made = ["--home-dir", str(home), "--create-home"] if home else ["--no-create-home"]
    subprocess.run(["useradd", "--system", *made, name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        remove_user(name)


def remove_user(name, timeout=30):
    """Kill what still runs as ``name`` (a failed test's webapp), then remove it: the host guard counts on it."""
    deadline = time.monotonic() + timeout
    while True:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True, check=False)
        gone = subprocess.run(["userdel", name], capture_output=True, check=False).returncode in (0, 6)
        if gone or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # "currently used by process": the kill has not landed yet
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        raise AssertionError(f"user {name} could not be removed")


def give(path, user):
    """``chown -R`` ``path`` to ``user`` (a pwd entry; None: leave it root's)."""
    if user is not None:
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(path)], check=True)
    return path
