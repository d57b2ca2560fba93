"""
What the attack modules share: a throw-away deploy user (``useradd``, removed after), a
temporary folder it can reach, its ``staging`` deployed once by root (Salt), and the
ways a test acts as that user (the attacker) or runs ``salt-call`` as the operator does.

Import the fixtures into a test module by name (``from support.privileges import top,
user, site``): each module gets its own user and tree.
"""

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import types

import pytest
import yaml

import make_repo as sample
from support import failures
from support.failures import SALT_CALL, ModuleLoaders, base_settings, clone_origin, masterless_minion
from support.helpers import env_root
from support.users import PYTHON, throwaway_user

ENV = "staging"
STRACE = shutil.which("strace")

SKIPS = [
    pytest.mark.skipif(os.geteuid() != 0, reason="only root can deploy as another user"),
    pytest.mark.skipif(not shutil.which("useradd"), reason="useradd is not installed"),
    pytest.mark.skipif(
        subprocess.run([PYTHON, "-c", "import ensurepip, venv"], capture_output=True, check=False).returncode != 0,
        reason="python3-venv is not installed (.ci/run installs it)",
    ),
]


@pytest.fixture(scope="module")
def top():
    # /tmp/pytest-of-root is root's alone (0700): the user could not reach its tree there
    path = pathlib.Path(tempfile.mkdtemp(prefix="vumi-priv-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def user(top):
    with throwaway_user("vumipriv-", home=top / "home") as entry:
        yield entry


@pytest.fixture(scope="module")
def site(minion_opts, origin, top, user, supervisord):
    """The user's ``staging``, deployed once by root; its upstream is the user's too (a pusher's)."""
    failures.SUPERVISOR.update(supervisord.settings())
    repo = clone_origin(origin, top / "upstream")
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(repo)], check=True)
    base_dir = top / "srv"
    loaders = ModuleLoaders(minion_opts, top)
    settings = base_settings(base_dir, repo, user=user.pw_name, python=PYTHON)
    loaders.use(settings)
    try:
        first = loaders.vumi.deploy(ENV)
        yield types.SimpleNamespace(loaders=loaders, vumi=loaders.vumi, repo=repo, base_dir=base_dir,
                                    root=env_root(base_dir, ENV), settings=settings, first=first)  # fmt: skip
    finally:
        loaders.close()


def as_user(user, *command, **kwargs):
    """A command run as the user (the attacker), in their own right."""
    return subprocess.run(
        list(command), user=user.pw_uid, group=user.pw_gid, extra_groups=[], env={"PATH": "/usr/bin:/bin", "HOME": "/"},
        capture_output=True, text=True, check=False, **kwargs,
    )  # fmt: skip


def commit(site, user, path, text, message):
    subprocess.run(["chown", "-R", "0:0", str(site.repo)], check=True)  # git refuses a repository of another's
    sha = sample.commit_file(site.repo, ENV, path, text, message)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(site.repo)], check=True)
    return sha


def victim_file(top, name="victim", text="root's own\n"):
    path = top / "victims" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def untouched(path, text="root's own\n"):
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) and st.st_uid == 0 and path.read_text() == text


@contextlib.contextmanager
def bounded(seconds, what):
    """Fail (instead of hanging) when ``what`` takes longer than ``seconds``: SIGALRM interrupts a blocked open or wait."""

    def expired(signum, frame):
        raise TimeoutError(f"{what} did not return within {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def pillar_config(top, settings, name="call", envs=None):
    """
    A masterless minion config under ``top / name`` whose ``vumi`` settings come from
    pillar, as users write them (``envs``: per environment overrides, and ``deploy``).
    """
    folder = top / name
    conf, state, pillar = folder / "conf", folder / "salt-state", folder / "pillar"
    for path in (conf, state, pillar):
        path.mkdir(parents=True, exist_ok=True)
    (pillar / "top.sls").write_text("base:\n  '*':\n    - vumi\n")
    vumi = dict(settings, environments=envs or {}, supervisor=dict(settings["supervisor"], manage_service=False))
    (pillar / "vumi.sls").write_text(yaml.safe_dump({"vumi": vumi}))
    (conf / "minion").write_text(yaml.safe_dump(masterless_minion(state, pillar, "vumi-priv-")))
    warm = run_salt_call(conf, "test.true")
    assert warm.returncode == 0, warm.text
    return conf


#: salt-call in this interpreter, reporting its own peak RSS (root's process alone, not its children):
#: VmHWM of its own memory, not getrusage's ru_maxrss, which Linux carries over an execve from the
#: process that forked it (a pytest worker of 400 MB made every salt-call look that large)
_MEASURED = (
    "import atexit, runpy, sys\n"
    "out = sys.argv.pop(1)\n"
    "def peak():\n"
    "    kb = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
    "    open(out, 'w').write(kb)\n"
    "atexit.register(peak)\n"
    "sys.argv[0] = sys.argv[1]; del sys.argv[1]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_salt_call(conf, *args, timeout=300, measure=None, **kwargs):
    """
    ``salt-call --local`` of ``conf`` (JSON out); ``measure``: a path that gets root's peak
    RSS in KiB. The result has ``returncode``, ``data`` (the ``local`` return) and ``text``.
    """
    argv = [str(SALT_CALL), "--local", "-c", str(conf), "--out=json", *args]
    if measure is not None:
        argv = [sys.executable, "-c", _MEASURED, str(measure), *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout, **kwargs)
    try:
        data = json.loads(proc.stdout)["local"] if proc.stdout.strip() else None
    except ValueError:
        data = proc.stdout
    return types.SimpleNamespace(returncode=proc.returncode, data=data, text=f"{proc.stdout}\n{proc.stderr}")


def peak_rss_mb(path):
    return int(pathlib.Path(path).read_text()) / 1024


# --------------------------------------------------------------------------
# What root's own processes did, listed by strace
# --------------------------------------------------------------------------

CALLS = re.compile(
    r"^(?P<pid>\d+)\s+(?P<call>openat|open|creat|chown|fchown|lchown|fchownat|unlink|unlinkat|rename|renameat2?|"
    r"symlink|symlinkat|link|linkat|mkdir|mkdirat|rmdir|chmod|fchmod|fchmodat|truncate)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)"
)
# a clone may be cut in two lines by another process's: "clone3(... <unfinished ...>", "<... clone3 resumed>) = N"
CLONE = re.compile(
    r"^(?P<pid>\d+)\s+(?:(?:clone3?|fork|vfork)\(|<\.\.\. (?:clone3?|fork|vfork) resumed>).*=\s+(?P<child>\d+)"
)
SETUID = re.compile(r"^(?P<pid>\d+)\s+set(?:res|re)?uid\((?P<uid>\d+)")
TRACED = (
    "trace=openat,open,creat,chown,fchown,lchown,fchownat,unlink,unlinkat,rename,renameat,renameat2,"
    "symlink,symlinkat,link,linkat,mkdir,mkdirat,rmdir,chmod,fchmod,fchmodat,truncate,"
    "clone,clone3,fork,vfork,setuid,setreuid,setresuid"
)


def traced(conf, log, *args):
    """``salt-call`` of ``args`` under strace, following every process, into ``log``."""
    proc = subprocess.run(
        [STRACE, "-f", "-y", "-s", "300", "-o", str(log), "-e", TRACED,
         str(SALT_CALL), "--local", "-c", str(conf), "--out=json", *args],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    return proc


def root_calls_in(trace, tree):
    """
    Of root's processes (not those that dropped to the user, nor their children): the
    calls that changed ``tree`` (``writes``), and the files in it they opened to read
    (``reads``: an open that is not of a folder; a folder root lists is not a read).
    """
    lines = trace.splitlines()
    parent, dropped_at = {}, set()
    for line in lines:  # first the family tree: a child's lines may come before its parent's clone returns
        clone = CLONE.match(line)
        if clone:
            parent[clone.group("child")] = clone.group("pid")
        setuid = SETUID.match(line)
        if setuid and setuid.group("uid") != "0":
            dropped_at.add(setuid.group("pid"))

    def dropped(pid):
        while pid is not None:
            if pid in dropped_at:
                return True
            pid = parent.get(pid)
        return False

    found = {"writes": [], "reads": []}
    for line in lines:
        match = CALLS.match(line)
        if not match or dropped(match.group("pid")):
            continue
        args = match.group("args")
        # the path opened: "<dir fd>, \"path\"" for openat; a failed open counts as well (it was tried)
        path = re.search(r'"([^"]*)"', args)
        inside = str(tree) in args if path is None else (str(tree) in path.group(1) or
                                                         (not path.group(1).startswith("/") and str(tree) in args))  # fmt: skip
        if not inside:
            continue
        if match.group("call") in ("openat", "open"):
            if re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
                if not match.group("ret").startswith("-"):
                    found["writes"].append(line)
            elif "O_DIRECTORY" not in args:
                found["reads"].append(line)
        elif not match.group("ret").startswith("-"):
            found["writes"].append(line)
    return found
