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
import stat
import subprocess

import pytest
import yaml
from salt.exceptions import CommandExecutionError

from support import failures
from support.failures import SALT_CALL, salt_call_config
from support.privileges import (  # noqa: F401  (fixtures)
    ENV,
    SKIPS,
    STRACE,
    as_user,
    commit,
    root_calls_in,
    site,
    top,
    traced,
    untouched,
    user,
    victim_file,
)

pytestmark = SKIPS


# --------------------------------------------------------------------------
# The attacks, one by one
# --------------------------------------------------------------------------


def test_1_a_forged_pid_file_makes_root_signal_nothing(site, user, top):
    victim = subprocess.Popen(["sleep", "120"])  # pylint: disable=consider-using-with  (root's process)
    try:
        with open(f"/proc/{victim.pid}/stat", encoding="utf-8") as fh:
            started = fh.read().rsplit(")", 1)[1].split()[19]
        port = failures.free_port()
        pids = site.root / "shared" / "tmp" / "pids"
        for name in (f"webapp.{port}.pid", f"webapp.health.{port}.pid"):
            assert (
                as_user(user, "sh", "-c", f"printf '%s\\n%s\\nx\\n' {victim.pid} {started} > {pids / name}").returncode
                == 0
            )
        site.vumi.deploy(ENV, health_check=True)  # crash recovery and the health check run
        # a real webapp on that port, started, restarted and stopped: supervisor's pid, never the file's
        site.vumi.start_webapp(ENV, port, ports=[port])
        site.vumi.restart_webapp(ENV, port, ports=[port])
        stopped = site.vumi.stop_webapp(ENV, port, ports=[port])
        assert stopped["pid"] not in (None, victim.pid), stopped
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_2_a_requirements_include_of_a_root_only_file_hands_nothing_over(site, user, top):
    secret = victim_file(top, "secret", "TOKEN=s3cr3t-of-root\n")
    commit(
        site,
        user,
        "config/requirements.pip",
        (site.repo / "config" / "requirements.pip").read_text() + f"-r {secret}\n",
        "include a root file",
    )
    with pytest.raises(CommandExecutionError, match=r"failed at stage 'virtualenv'") as exc:
        site.vumi.deploy(ENV)
    # the user's own process named it and could not read it
    assert "s3cr3t" not in str(exc.value) and f"{secret}: Permission denied" in str(exc.value), exc.value
    leaked = subprocess.run(
        ["grep", "-rl", "s3cr3t-of-root", str(site.root)], capture_output=True, text=True, check=False
    )
    assert leaked.stdout == ""  # nowhere in the user's tree: pip ran as the user and could not read it
    assert untouched(secret, "TOKEN=s3cr3t-of-root\n")
    commit(
        site,
        user,
        "config/requirements.pip",
        (site.repo / "config" / "requirements.pip").read_text().replace(f"-r {secret}\n", ""),
        "undo",
    )


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
        with pytest.raises(CommandExecutionError, match=r"\.git is a symlink; refusing"):
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
        f"rm -rf {site.root}/failed; ln -sfn {folder} {site.root}/failed 2>/dev/null\n"
        f"echo hooked >> {victim} 2>/dev/null\n"
        "exit 0\n"
    )
    (hooks / "post-checkout").chmod(0o755)
    (pathlib.Path(user.pw_dir) / ".gitconfig").write_text(f"[core]\n    hooksPath = {hooks}\n")
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", user.pw_dir], check=True)
    commit(site, user, "NEWS", "hooked\n", "a new commit")
    try:
        # the user's own process meets the failed/ link (a folder it cannot look into) and stops
        with pytest.raises(CommandExecutionError, match=r"stage 'cut_release': .*Permission denied: .*/failed"):
            site.vumi.deploy(ENV, settings={"SECRET_KEY": "k"})
        assert untouched(victim)
        assert (folder / "keep").read_text() == "root's own\n" and os.stat(folder).st_uid == 0
        # the history's link was set aside and a new history begun, where the failure is told
        history = os.lstat(site.root / "history.log")
        assert stat.S_ISREG(history.st_mode) and history.st_uid == user.pw_uid
        assert "cut_release" in (site.root / "history.log").read_text()
        # the planted failed/ link: refused by the next deploy before it acts
        with pytest.raises(CommandExecutionError, match="failed is a symlink; refusing"):
            site.vumi.deploy(ENV)
    finally:
        (pathlib.Path(user.pw_dir) / ".gitconfig").unlink()
        for link in [site.root / "failed", *site.root.glob("history.log.not-a-log-*")]:
            if link.is_symlink():
                link.unlink()


def test_5_a_log_swapped_for_a_link_sends_none_of_roots_writes_elsewhere(site, user, top):
    """
    supervisord (root) opens, writes and rotates the webapp's log: in root's folder
    ``<base_dir>/<app>/.logs/<env>``, not at the link in ``shared/logs``, the user's to swap.
    """
    victim = victim_file(top, "chowned")
    port = failures.free_port()
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


@pytest.mark.skipif(STRACE is None, reason="strace is not installed (.ci/run installs Debian's)")
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
        proc = traced(conf, log, *args)
        assert proc.returncode == 0, (name, proc.stdout[-2000:], proc.stderr[-2000:])
        counts[name] = root_calls_in(log.read_text(), site.root)["writes"]
    print("\n[privileges] root's writes inside the user's tree: "
          + ", ".join(f"{k} {len(v)}" for k, v in counts.items()))  # fmt: skip
    assert counts == {k: [] for k in counts}, {k: v[:5] for k, v in counts.items()}
