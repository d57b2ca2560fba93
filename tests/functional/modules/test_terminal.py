"""
The deploy user's code and the operator's terminal: ``salt-call`` runs in a real
pseudo-terminal (its controlling terminal, as an operator's shell gives it), and code
of the user's, run by the deploy, tries to type a command into that terminal with
``ioctl(TIOCSTI)``, through ``/dev/tty`` and through any terminal descriptor it holds.
Whatever it pushes would be read by the operator's shell (root) once ``salt-call``
returns: the test reads the terminal's input queue instead, and asserts it is empty,
and that the attack really ran (it writes what it tried to a file of its own).

The attacks: a ``before_publish`` hook, a git hook of the user's own ``~/.gitconfig``
(no pillar hook at all), the build backend of a package the requirements install from
the repository, and ``vumi.execute``.
"""

import contextlib
import fcntl
import os
import subprocess
import termios
import tty

import pytest

from support.failures import SALT_CALL
from support.privileges import (  # noqa: F401  (fixtures)
    ENV,
    PYTHON,
    SKIPS,
    commit,
    pillar_config,
    site,
    top,
    user,
)

pytestmark = SKIPS

ATTACK = r"""
import fcntl, os, sys, termios
name, out = sys.argv[1], sys.argv[2]
tried = []
targets = []
try:
    targets.append(("/dev/tty", os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)))
except OSError as exc:
    tried.append(f"/dev/tty: open: {exc.strerror}")
for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
    with __import__("contextlib").suppress(OSError):
        if os.isatty(fd) and fd not in [t[1] for t in targets]:
            targets.append((f"fd {fd}", fd))
for label, fd in targets:
    try:
        for ch in f"echo typed-by-{name}\n".encode():
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([ch]))
        tried.append(f"{label}: pushed")
    except OSError as exc:
        tried.append(f"{label}: {exc.strerror}")
with open(os.path.join(out, name), "w") as fh:
    fh.write("ran\n" + "\n".join(tried) + "\n")
"""

BACKEND = """
import os, subprocess
subprocess.run([{python!r}, {attack!r}, "backend", {out!r}])

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("this package only attacks")
"""


@pytest.fixture(scope="module")
def attack(top, user):
    folder = top / "attacks"
    folder.mkdir()
    os.chown(folder, user.pw_uid, user.pw_gid)
    script = top / "attack.py"
    script.write_text(ATTACK)
    return script, folder


def in_terminal(argv, timeout=300):
    """
    Run ``argv`` as the session leader of a new pseudo-terminal (its controlling
    terminal, its standard input): (exit code, output, what is left to read on the
    terminal's input once it ended, that is what the operator's shell would run).
    """
    leader, follower = os.openpty()
    tty.setraw(follower)  # no echo, no lines: whatever is pushed stays in the input queue as it is
    try:
        proc = subprocess.run(
            argv, stdin=follower, capture_output=True, text=True, check=False, timeout=timeout,
            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )  # fmt: skip
        os.set_blocking(follower, False)
        try:
            typed = os.read(follower, 4096)
        except BlockingIOError:
            typed = b""
        return proc.returncode, proc.stdout + proc.stderr, typed
    finally:
        os.close(leader)
        os.close(follower)


def salt_call(conf, *args):
    return [str(SALT_CALL), "--local", "-c", str(conf), "--out=json", *args]


def nothing_typed(folder, name, typed):
    """The attack ran (its report is there), and nothing it pushed reached the terminal's input."""
    path = folder / name
    assert path.exists(), f"the {name} attack did not run"
    report = path.read_text()
    assert typed == b"", (typed, report)
    assert "pushed" not in report, report


def test_a_hook_types_nothing_into_the_operators_terminal(site, user, top, attack):
    script, folder = attack
    hooks = {"before_publish": [f"{PYTHON} {script} hook {folder}"]}
    conf = pillar_config(top, dict(site.settings, hooks=hooks), name="hook")
    commit(site, user, "NEWS", "hooked\n", "a commit for the hook")
    code, out, typed = in_terminal(salt_call(conf, "vumi.deploy", ENV))
    assert code == 0, out[-3000:]
    nothing_typed(folder, "hook", typed)


def test_a_git_hook_of_the_users_own_config_types_nothing(site, user, top, attack):
    script, folder = attack
    hooks_dir = top / "home" / "githooks"
    hooks_dir.mkdir(exist_ok=True)
    (hooks_dir / "post-checkout").write_text(f"#!/bin/sh\n{PYTHON} {script} githook {folder}\nexit 0\n")
    (hooks_dir / "post-checkout").chmod(0o755)
    gitconfig = top / "home" / ".gitconfig"
    gitconfig.write_text(f"[core]\n    hooksPath = {hooks_dir}\n")
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(top / "home")], check=True)
    conf = pillar_config(top, site.settings, name="githook")
    commit(site, user, "NEWS", "git-hooked\n", "a commit for the git hook")
    try:
        code, out, typed = in_terminal(salt_call(conf, "vumi.deploy", ENV))
    finally:
        gitconfig.unlink()
    assert code == 0, out[-3000:]
    nothing_typed(folder, "githook", typed)


def test_a_packages_build_backend_types_nothing(site, user, top, attack):
    script, folder = attack
    requirements = (site.repo / "config" / "requirements.pip").read_text()
    commit(site, user, "evilpkg/backend.py", BACKEND.format(python=PYTHON, attack=str(script), out=str(folder)), "pkg")
    commit(site, user, "evilpkg/pyproject.toml",
           '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n\n'
           '[project]\nname = "evilpkg"\nversion = "1.0"\n', "its project")  # fmt: skip
    commit(site, user, "config/requirements.pip", requirements + "./evilpkg\n", "install it")
    conf = pillar_config(top, site.settings, name="backend")
    try:
        code, out, typed = in_terminal(salt_call(conf, "vumi.deploy", ENV))
        assert code != 0 and "virtualenv" in out, out[-3000:]  # the backend fails its build, after its attack
        nothing_typed(folder, "backend", typed)
    finally:
        commit(site, user, "config/requirements.pip", requirements, "not any more")


def test_execute_types_nothing_into_the_operators_terminal(site, user, top, attack):
    script, folder = attack
    conf = pillar_config(top, site.settings, name="execute")
    code, out, typed = in_terminal(salt_call(conf, "vumi.execute", ENV, f"{PYTHON} {script} execute {folder}"))
    assert code == 0, out[-3000:]
    nothing_typed(folder, "execute", typed)
    with contextlib.suppress(FileNotFoundError):
        (folder / "execute").unlink()
