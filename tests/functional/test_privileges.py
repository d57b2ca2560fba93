"""
Privilege separation, attacked: Salt runs as root, the environment belongs to a
throw-away user this module makes (``useradd``, removed after), and that user (or
whoever can push to the repository) tries to make root act for them. Each test plants
its trap inside the user's tree and a victim (a file, a folder, a process) under the
module's own temporary folder, never a real system file or process, then asserts the
victim is untouched. The last test lists, with strace, every path root (not the
dropped child) opened for writing, chowned, unlinked, renamed or linked during a deploy,
an update, a rollback and a cleanup, and asserts none is inside the user's tree.
"""

import json
import os
import pathlib
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tempfile

import make_repo as sample
import pytest
import yaml
from failure_support import SALT_CALL, ModuleLoaders, base_settings, clone_origin, salt_call_config
from helpers import env_root
from salt.exceptions import CommandExecutionError

import failure_support

ENV = "staging"
PYTHON = "/usr/bin/python3"  # the user cannot run the project's interpreter under /root or /work
STRACE = shutil.which("strace")

pytestmark = [
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
    name = f"vumipriv-{secrets.token_hex(3)}"
    home = top / "home"
    subprocess.run(["useradd", "--system", "--home-dir", str(home), "--create-home", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def site(minion_opts, origin, top, user, supervisord):
    """The user's ``staging``, deployed once by root; its upstream is the user's too (a pusher's)."""
    failure_support.SUPERVISOR.update(supervisord.settings())
    repo = clone_origin(origin, top / "upstream")
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(repo)], check=True)
    base_dir = top / "srv"
    loaders = ModuleLoaders(minion_opts, top)
    settings = base_settings(base_dir, repo, user=user.pw_name, python=PYTHON)
    loaders.use(settings)
    try:
        first = loaders.vumi.deploy(ENV)
        yield type("Site", (), dict(loaders=loaders, vumi=loaders.vumi, repo=repo, base_dir=base_dir,
                                    root=env_root(base_dir, ENV), settings=settings, first=first))  # fmt: skip
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


# --------------------------------------------------------------------------
# The attacks, one by one
# --------------------------------------------------------------------------


def test_1_a_forged_pid_file_makes_root_signal_nothing(site, user, top):
    victim = subprocess.Popen(["sleep", "120"])  # pylint: disable=consider-using-with  (root's process)
    try:
        with open(f"/proc/{victim.pid}/stat", encoding="utf-8") as fh:
            started = fh.read().rsplit(")", 1)[1].split()[19]
        pids = site.root / "shared" / "tmp" / "pids"
        for name in ("webapp.8000.pid", "webapp.health.8000.pid"):
            assert as_user(user, "sh", "-c", f"printf '%s\\n%s\\nx\\n' {victim.pid} {started} > {pids / name}").returncode == 0
        site.vumi.deploy(ENV, health_check=True)  # crash recovery and the health check run
        with pytest.raises(Exception):
            site.vumi.stop_webapp(ENV, 8000)  # not configured: refused, nothing signalled
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_2_a_requirements_include_of_a_root_only_file_hands_nothing_over(site, user, top):
    secret = victim_file(top, "secret", "TOKEN=s3cr3t-of-root\n")
    commit(site, user, "config/requirements.pip",
           (site.repo / "config" / "requirements.pip").read_text() + f"-r {secret}\n", "include a root file")
    with pytest.raises(CommandExecutionError) as exc:
        site.vumi.deploy(ENV)
    assert "s3cr3t" not in str(exc.value)
    leaked = subprocess.run(["grep", "-rl", "s3cr3t-of-root", str(site.root)], capture_output=True, text=True, check=False)
    assert leaked.stdout == ""  # nowhere in the user's tree: pip ran as the user and could not read it
    assert untouched(secret, "TOKEN=s3cr3t-of-root\n")
    commit(site, user, "config/requirements.pip",
           (site.repo / "config" / "requirements.pip").read_text().replace(f"-r {secret}\n", ""), "undo")


def test_3_a_cache_git_folder_linked_outside_loses_no_lock_file_of_roots(site, user, top):
    outside = top / "victims" / "project"
    outside.mkdir(parents=True, exist_ok=True)
    lock = outside / "Gemfile.lock"
    lock.write_text("root's own\n")
    git_dir = site.root / "shared" / "repositories" / "vumi" / ".git"
    saved = git_dir.with_name("saved.git")
    assert as_user(user, "mv", str(git_dir), str(saved)).returncode == 0
    assert as_user(user, "ln", "-s", str(outside), str(git_dir)).returncode == 0
    try:
        with pytest.raises(CommandExecutionError):
            site.vumi.deploy(ENV)
        assert untouched(lock)
    finally:
        as_user(user, "rm", str(git_dir))
        as_user(user, "mv", str(saved), str(git_dir))


def test_4_a_git_hook_of_the_users_own_config_gets_root_to_do_nothing(site, user, top):
    victim = victim_file(top, "appended")
    folder = top / "victims" / "folder"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keep").write_text("root's own\n")
    os.chmod(folder, 0o700)
    hooks = pathlib.Path(user.pw_dir) / "hooks"
    hooks.mkdir(exist_ok=True)
    # between git's checkout and the next steps: the tree's history and settings links to root's files
    (hooks / "post-checkout").write_text(
        "#!/bin/sh\n"
        f"ln -sfn {victim} {site.root}/history.log 2>/dev/null\n"
        f"ln -sfn {folder} {site.root}/failed 2>/dev/null\n"
        f"echo hooked >> {victim} 2>/dev/null\n"
        "exit 0\n"
    )
    (hooks / "post-checkout").chmod(0o755)
    (pathlib.Path(user.pw_dir) / ".gitconfig").write_text(f"[core]\n    hooksPath = {hooks}\n")
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", user.pw_dir], check=True)
    commit(site, user, "NEWS", "hooked\n", "a new commit")
    try:
        with pytest.raises(CommandExecutionError):
            site.vumi.deploy(ENV, settings={"SECRET_KEY": "k"})
        assert untouched(victim)
        assert (folder / "keep").read_text() == "root's own\n" and os.stat(folder).st_uid == 0
    finally:
        (pathlib.Path(user.pw_dir) / ".gitconfig").unlink()
        for name in ("history.log", "failed"):
            link = site.root / name
            if link.is_symlink():
                link.unlink()


def test_5_a_log_swapped_for_a_link_sends_none_of_roots_writes_elsewhere(site, user, top):
    """
    supervisord (root) opens, writes and rotates the webapp's log: in root's folder
    ``<base_dir>/<app>/.logs/<env>``, not at the link in ``shared/logs``, the user's to swap.
    """
    victim = victim_file(top, "chowned")
    port = failure_support.free_port()
    site.vumi.deploy(ENV)  # the repository's own settings again (attack 4 deployed a partial one)
    try:
        site.vumi.start_webapp(ENV, port, ports=[port])
        log = site.root / "shared" / "logs" / f"webapp.{port}.log"
        as_user(user, "rm", "-f", str(log))
        assert as_user(user, "ln", "-s", str(victim), str(log)).returncode == 0
        site.vumi.restart_webapp(ENV, port, ports=[port])  # supervisord reopens its log
        real = site.base_dir / "vumi" / ".logs" / ENV / f"webapp.{port}.log"
        assert "Listening at" in real.read_text()
        assert as_user(user, "sh", "-c", f"echo planted > {real}").returncode != 0  # root's folder
        assert as_user(user, "cat", str(real)).returncode == 0  # readable by the user (its group)
    finally:
        site.vumi.stop_webapp(ENV, port, ports=[port])
    assert untouched(victim)
    as_user(user, "rm", "-f", str(log))


def test_6_the_folders_above_an_environment_are_roots(site, user, top):
    for folder in (site.base_dir, site.base_dir / "vumi"):
        st = os.stat(folder)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755), folder
    # so the user cannot replace a neighbour's environment (production of another user)
    other = site.base_dir / "vumi" / "production"
    other.mkdir(exist_ok=True)
    assert as_user(user, "mv", str(other), str(site.base_dir / "vumi" / "stolen")).returncode != 0
    assert as_user(user, "ln", "-s", "/", str(site.base_dir / "vumi" / "planted")).returncode != 0
    other.rmdir()


def test_7_secrets_stay_out_of_what_others_can_read(site, user):
    site.vumi.deploy(ENV)  # a history line (the attack of test 4 took the user's own file away)
    history = site.root / "history.log"
    assert stat.S_IMODE(history.stat().st_mode) == 0o640
    assert stat.S_IMODE((site.root / "shared" / "logs").stat().st_mode) == 0o750
    shown = site.vumi.settings(ENV, repo_url="https://deploy:hunter2@git.example.invalid/app.git")
    assert "hunter2" not in json.dumps(shown)


# --------------------------------------------------------------------------
# Root's own writes, listed by strace
# --------------------------------------------------------------------------

WRITES = re.compile(
    r"^(?P<pid>\d+)\s+(?P<call>openat|open|creat|chown|fchown|lchown|fchownat|unlink|unlinkat|rename|renameat2?|"
    r"symlink|symlinkat|link|linkat|mkdir|mkdirat|rmdir|chmod|fchmod|fchmodat|truncate)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)"
)
# a clone may be cut in two lines by another process's: "clone3(... <unfinished ...>", "<... clone3 resumed>) = N"
CLONE = re.compile(r"^(?P<pid>\d+)\s+(?:(?:clone3?|fork|vfork)\(|<\.\.\. (?:clone3?|fork|vfork) resumed>).*=\s+(?P<child>\d+)")
SETUID = re.compile(r"^(?P<pid>\d+)\s+set(?:res|re)?uid\((?P<uid>\d+)")


def root_writes_in(trace, tree):
    """Calls of root's processes (not those that dropped to the user, nor their children) that changed ``tree``."""
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

    found = []
    for line in lines:
        match = WRITES.match(line)
        if not match or dropped(match.group("pid")) or match.group("ret").startswith("-"):
            continue
        args = match.group("args")
        if match.group("call") in ("openat", "open") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
            continue
        if str(tree) in args:
            found.append(line)
    return found


@pytest.mark.skipif(STRACE is None, reason="strace is not installed (.ci/run installs Debian's)")
def test_the_remote_is_asked_as_the_user_whose_credentials_reach_it(site, user):
    # what vumi.deployed asks before it acts: git run by root refuses the user's repository
    # ("dubious ownership"), and would reach a real remote with root's keys, not the user's
    head = as_user(user, "git", "-C", str(site.repo), "rev-parse", ENV)
    assert head.returncode == 0, head.stderr
    assert site.vumi.remote_revision(ENV) == head.stdout.strip()


def test_a_deploy_as_the_user_logs_to_salts_root_only_log(site, user, top):
    # salt-call's log file lies where only root may look (as Salt makes its root_dir): the
    # user's process writes on through what it inherited, and runs its commands as itself
    conf = salt_call_config(top / "rootlog", site.settings)
    minion = yaml.safe_load((conf / "minion").read_text())
    logs = pathlib.Path(minion["root_dir"]) / "root-only"  # Salt puts an absolute log_file under root_dir
    logs.mkdir(mode=0o700)
    minion.update(log_file="/root-only/minion.log", log_level_logfile="debug")
    (conf / "minion").write_text(yaml.safe_dump(minion))
    commit(site, user, "NEWS", "logged\n", "a commit to deploy, logged")
    proc = subprocess.run([str(SALT_CALL), "--local", "-c", str(conf), "--out=json", "vumi.deploy", ENV],
                          capture_output=True, text=True, check=False, timeout=300)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert json.loads(proc.stdout)["local"]["revision"] == site.vumi.current(ENV)["revision"]
    text = (logs / "minion.log").read_text()
    assert "Environment could not be retrieved" not in text, text[-2000:]
    assert os.stat(logs / "minion.log").st_uid == 0


def test_root_changes_nothing_inside_the_users_tree(site, user, top):
    conf = salt_call_config(top / "call", dict(site.settings, health_check=True))
    counts = {}
    commit(site, user, "NEWS", "traced\n", "a commit to deploy")
    for name, args in (
        ("deploy", ["vumi.deploy", ENV]),
        ("update", ["vumi.update", ENV]),
        ("rollback", ["vumi.rollback", ENV, "restart=False"]),
        ("cleanup", ["vumi.cleanup", ENV, "limit=1"]),
    ):
        log = top / f"strace-{name}.log"
        proc = subprocess.run(
            [STRACE, "-f", "-y", "-s", "300", "-o", str(log), "-e",
             "trace=openat,open,creat,chown,fchown,lchown,fchownat,unlink,unlinkat,rename,renameat,renameat2,"
             "symlink,symlinkat,link,linkat,mkdir,mkdirat,rmdir,chmod,fchmod,fchmodat,truncate,"
             "clone,clone3,fork,vfork,setuid,setreuid,setresuid",
             str(SALT_CALL), "--local", "-c", str(conf), "--out=json", *args],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, (name, proc.stdout[-2000:], proc.stderr[-2000:])
        counts[name] = root_writes_in(log.read_text(), site.root)
    print("\n[privileges] root's writes inside the user's tree: "
          + ", ".join(f"{k} {len(v)}" for k, v in counts.items()))  # fmt: skip
    assert counts == {k: [] for k in counts}, {k: v[:5] for k, v in counts.items()}
