"""
Scenarios from Capistrano's features, Ansistrano's test playbooks and
Deployer's tests, translated into our commands (each test names its scenario).
Real git repositories, virtualenvs and files in ``tmp_path``.
"""

import datetime
import json
import os
import pathlib
import subprocess

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import make_repo as sample  # tests/conftest.py puts sample/ on sys.path
from support import tree, users
from support.helpers import current_target, env_root, release_dirs

ENV = "staging"


def history(base_dir):
    return tree.history(env_root(base_dir))


def test_capistrano_check_linked_dirs_a_missing_shared_dir_is_created(vumi, base_dir):
    deployed = vumi.deploy(ENV, shared_dirs=["logs", "tmp", "media"])
    media = env_root(base_dir) / "shared" / "media"
    link = pathlib.Path(deployed["path"]) / "vumi" / "media"
    assert media.is_dir() and not media.is_symlink()
    assert link.is_symlink() and link.resolve() == media.resolve()  # not dangling


def test_deployer_shared_dir_is_seeded_from_the_repository_on_the_first_deploy(vumi, repo, base_dir):
    sample.commit_file(repo, ENV, "uploads/poem.txt", "roses are red\n", "an upload the repo ships")
    vumi.deploy(ENV, shared_dirs=["logs", "tmp", "uploads"])
    shared = env_root(base_dir) / "shared" / "uploads"
    assert (shared / "poem.txt").read_text() == "roses are red\n"
    (shared / "user-upload.png").write_text("kept")
    # the next deploy keeps the shared folder as it is: the repository's copy does not win again
    sample.commit_file(repo, ENV, "uploads/poem.txt", "violets are blue\n", "the repo's copy changes")
    second = vumi.deploy(ENV, shared_dirs=["logs", "tmp", "uploads"])
    assert (shared / "poem.txt").read_text() == "roses are red\n" and (shared / "user-upload.png").is_file()
    assert (pathlib.Path(second["path"]) / "vumi" / "uploads" / "user-upload.png").is_file()


def test_capistrano_nested_linked_dirs(vumi, base_dir):
    deployed = vumi.deploy(ENV, shared_dirs=["logs", "tmp", "public/system", "storage/logs"])
    code = pathlib.Path(deployed["path"]) / "vumi"
    for name in ("public/system", "storage/logs"):
        assert (code / name).is_symlink() and (code / name).resolve() == (
            env_root(base_dir) / "shared" / name
        ).resolve()
        assert not (code / name).parent.is_symlink()


def test_a_shared_dir_through_a_symlink_the_repository_tracks_is_refused(vumi, repo, base_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    sample.git(repo, "checkout", "--quiet", ENV)
    os.symlink(outside, repo / "public")
    sample.git(repo, "add", "public")
    sample.git(repo, "commit", "--quiet", "-m", "public is a link out")
    with pytest.raises(CommandExecutionError, match="is a symlink; refusing to follow it"):
        vumi.deploy(ENV, shared_dirs=["logs", "tmp", "public/system"])
    assert list(outside.iterdir()) == []


def test_a_refused_release_name_leaves_every_release_where_it_was(vumi, repo, base_dir):
    old = vumi.deploy(ENV)["release"]
    sample.commit_file(repo, ENV, "NEWS", "next\n", "next")
    new = vumi.deploy(ENV)["release"]
    with pytest.raises(CommandExecutionError, match="does not sort after"):
        vumi.prepare(ENV, release=old)
    assert release_dirs(base_dir) == [old, new]  # the once-published release is still a rollback target
    assert not (env_root(base_dir) / "failed").exists() or old not in os.listdir(env_root(base_dir) / "failed")
    assert vumi.rollback(ENV)["release"] == old


def test_capistrano_revisions_log_who_which_branch_which_commit(vumi, repo, base_dir, minion_opts):
    deployed = vumi.deploy(ENV)
    sample.commit_file(repo, ENV, "NEWS", "next\n", "next")
    vumi.deploy(ENV)
    vumi.rollback(ENV)
    lines = history(base_dir)
    deploys = [e for e in lines if e["action"] == "deploy"]
    assert deploys[0]["revision"] == deployed["revision"] and deploys[0]["branch"] == ENV
    for entry in deploys + [e for e in lines if e["action"] == "rollback"]:
        assert entry["user"] and entry["minion"] == minion_opts["id"] and entry["branch"] == ENV, entry


def test_capistrano_revision_time_the_commits_time_and_subject(vumi, repo, base_dir):
    sample.commit_file(repo, ENV, "NEWS", "dated\n", "Release notes for the spring")
    deployed = vumi.deploy(ENV)
    stamp = int(sample.git(repo, "log", "-1", "--format=%ct", ENV))
    want = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).isoformat(timespec="seconds")
    manifest = json.loads((pathlib.Path(deployed["path"]) / "release.json").read_text())
    assert (manifest["commit_time"], manifest["commit_subject"]) == (want, "Release notes for the spring")
    (listed,) = [r for r in vumi.releases(ENV) if r["release"] == deployed["release"]]
    assert (listed["commit_time"], listed["commit_subject"]) == (want, "Release notes for the spring")


def test_cleanup_removes_the_leftover_link_of_an_interrupted_switch(vumi, base_dir):
    deployed = vumi.deploy(ENV)
    stray = env_root(base_dir) / "current.tmp-424242"
    os.symlink(f"releases/{deployed['release']}", stray)
    vumi.cleanup(ENV)
    assert not os.path.lexists(stray)
    assert current_target(base_dir) == f"releases/{deployed['release']}"


def test_keep_failed_holds_for_failed_releases_and_health_logs(vumi, repo, base_dir):
    vumi.deploy(ENV)
    sample.commit_file(repo, ENV, "HEALTH_FAIL", "on purpose\n", "unhealthy")
    for _ in range(5):
        with pytest.raises(CommandExecutionError, match="failed at stage 'health'"):
            vumi.deploy(ENV, keep_failed=2, health_check=True, health_path="/health")
    root = env_root(base_dir)
    assert len(os.listdir(root / "failed")) == 2
    assert len([n for n in os.listdir(root / "shared" / "logs") if n.startswith("webapp.health.")]) == 2


def test_a_planted_release_from_year_9999_gives_a_clear_error(vumi, base_dir, deploy_user):
    first = vumi.deploy(ENV)["release"]
    planted = env_root(base_dir) / "releases" / "99991231_235959"
    planted.mkdir()
    users.give(planted, deploy_user)  # planted by whoever can: the environment's user
    with pytest.raises(CommandExecutionError, match="99991231_235959 .* is later than any time"):
        vumi.deploy(ENV)
    assert current_target(base_dir) == f"releases/{first}"


def test_branch_as_a_keyword_argument_overrides_like_any_setting(vumi, loaders, repo):
    """The README: keyword arguments override any setting, branch included."""
    deployed = vumi.deploy(ENV, branch="production")
    assert deployed["revision"] == sample.git(repo, "rev-parse", "production")
    ret = loaders.states.vumi.deployed(ENV, branch="production")
    assert ret["result"] is True and ret["changes"] == {}, ret  # already there: no TypeError, no redeploy
    assert vumi.remote_revision(ENV, branch="production") == deployed["revision"]


def test_deployer_deploy_lock_unlock_is_locked(vumi, loaders, repo, base_dir):
    first = vumi.deploy(ENV)
    assert vumi.locked(ENV) is None
    held = vumi.lock(ENV, reason="incident 42: payments down")
    assert held["locked"] is True and held["reason"] == "incident 42: payments down" and held["user"]
    assert vumi.locked(ENV)["reason"] == "incident 42: payments down"
    sample.commit_file(repo, ENV, "NEWS", "a change during the incident\n", "change")
    for attempt in (lambda: vumi.deploy(ENV), lambda: vumi.prepare(ENV), lambda: vumi.update(ENV)):
        with pytest.raises(
            CommandExecutionError, match=r"staging is locked by \S+ since .*: incident 42: payments down"
        ):
            attempt()
    ret = loaders.states.vumi.deployed(ENV)
    assert ret["result"] is False and "incident 42" in ret["comment"], ret
    assert release_dirs(base_dir) == [first["release"]]
    assert vumi.unlock(ENV)["was"]["reason"] == "incident 42: payments down"
    assert vumi.locked(ENV) is None and vumi.unlock(ENV)["was"] is None
    assert vumi.deploy(ENV)["revision"] == sample.git(repo, "rev-parse", ENV)
    actions = [e["action"] for e in history(base_dir)]
    assert "lock" in actions and "unlock" in actions
    with pytest.raises(Exception, match="invalid reason"):
        vumi.lock(ENV, reason="")


def test_capistrano_linked_files_deployer_shared_files(vumi, base_dir):
    files = [".env", "config/local.py"]
    with pytest.raises(
        CommandExecutionError, match=r"failed at stage 'link_shared': shared file .*/shared/\.env is missing"
    ):
        vumi.deploy(ENV, shared_files=files)
    assert current_target(base_dir) is None  # nothing went live
    shared = env_root(base_dir) / "shared"
    (shared / ".env").write_text("SECRET=1\n")
    (shared / "config").mkdir()
    (shared / "config" / "local.py").write_text("DEBUG = False\n")
    deployed = vumi.deploy(ENV, shared_files=files)
    code = pathlib.Path(deployed["path"]) / "vumi"
    assert (code / ".env").is_symlink() and (code / ".env").read_text() == "SECRET=1\n"
    assert (code / "config" / "local.py").read_text() == "DEBUG = False\n"
    assert vumi.execute(ENV, "cat .env")["stdout"] == "SECRET=1"


def test_capistrano_deploy_check_changes_nothing_and_the_dry_run_says_so(vumi, loaders, repo, base_dir):
    fresh = vumi.check(ENV, shared_files=[".env"])
    assert fresh["checks"]["repository"]["ok"] and fresh["checks"]["tree"]["ok"]
    assert not fresh["ok"] and ".env" in fresh["checks"]["shared"]["detail"]
    assert list(base_dir.iterdir()) == []  # changed nothing
    vumi.deploy(ENV)
    ok = vumi.check(ENV)
    assert ok["ok"] and ok["checks"]["requirements"]["ok"], ok
    vumi.lock(ENV, reason="freeze")
    sample.commit_file(repo, ENV, "NEWS", "next\n", "next")
    assert "freeze" in vumi.check(ENV)["checks"]["lock"]["detail"]
    ret = loaders.states.vumi.deployed(ENV, test=True)  # a dry run of the state predicts the failure
    assert ret.result is False and "would fail" in ret.comment and "freeze" in ret.comment, ret
    assert not vumi.check(ENV, repo_url=str(base_dir / "nowhere"))["checks"]["repository"]["ok"]


def test_a_branch_name_as_revision_means_the_upstream_branch(vumi, repo):
    vumi.deploy(ENV)  # the cache now has a local "staging" branch
    sample.commit_file(repo, ENV, "NEWS", "moved on\n", "upstream moves")
    assert vumi.deploy(ENV, revision=ENV)["revision"] == sample.git(repo, "rev-parse", ENV)


def test_update_keeps_the_shared_links_when_the_repository_tracks_logs(vumi, repo, base_dir):
    vumi.deploy(ENV)
    sample.commit_file(repo, ENV, "logs/.gitkeep", "", "track logs/")
    updated = vumi.update(ENV)
    code = env_root(base_dir) / "releases" / updated["release"] / "vumi"
    for name in ("logs", "tmp"):
        assert (code / name).is_symlink(), name


@pytest.mark.parametrize("where", ["under a regular file", "in a folder Salt cannot write"])
def test_an_unusable_deploy_path_gets_a_clear_error(vumi, test_top, where):
    tmp_path = test_top
    if where == "under a regular file":
        (tmp_path / "plain-file").write_text("")
        base = tmp_path / "plain-file" / "srv"
        named = "Not a directory"
    else:
        base = tmp_path / "sealed" / "srv"
        (tmp_path / "sealed").mkdir()
        # root ignores modes, not the immutable flag (where the file system has it)
        if subprocess.run(["chattr", "+i", str(tmp_path / "sealed")], capture_output=True, check=False).returncode:
            pytest.skip(f"the file system of {tmp_path} has no immutable flag")
        named = "Operation not permitted"
    try:
        with pytest.raises(CommandExecutionError, match=f"cannot make the folder .*: {named}"):
            vumi.deploy(ENV, base_dir=str(base))
        with pytest.raises(CommandExecutionError, match="cannot make the folder"):
            vumi.layout(ENV, base_dir=str(base))
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "sealed")], capture_output=True, check=False)


def test_find_links_to_a_big_folder_reads_only_its_top(vumi, repo, base_dir, test_top):
    big = test_top / "big"
    (big / "deep" / "deeper").mkdir(parents=True)
    (big / "deep" / "deeper" / "huge.bin").write_bytes(b"x" * 1000)
    sample.commit_file(repo, ENV, "config/requirements.pip",
                       f"--no-index\n--find-links wheels\n-f {big}\nvumi-sample-lib==1.0\n", "find links elsewhere")  # fmt: skip
    first = vumi.deploy(ENV)
    (big / "deep" / "deeper" / "huge.bin").write_bytes(b"y" * 1000)  # below the top: not pip's business
    assert vumi.current(ENV)["requirements_changed"] is False
    (big / "new-1.0-py3-none-any.whl").write_bytes(b"a wheel")  # at the top: pip would see it
    assert vumi.current(ENV)["requirements_changed"] is True
    assert first["virtualenv_built"]


def test_history_log_is_rotated_past_its_size_and_read_across(vumi, repo, base_dir, monkeypatch):
    root = env_root(base_dir)
    first = vumi.deploy(ENV)
    with open(root / "history.log", "a", encoding="utf-8") as fh:  # a long life: many old lines
        fh.write(json.dumps({"action": "note", "pad": "x" * 2000}) + "\n")
        fh.write(json.dumps({"action": "note", "pad": "x" * (1 << 20)}) + "\n")
    sample.commit_file(repo, ENV, "NEWS", "next\n", "next")
    vumi.deploy(ENV)
    assert (root / "history.log.1").is_file() and (root / "history.log").stat().st_size < 100_000
    assert vumi.rollback(ENV)["release"] == first["release"]  # the rotated part still counts


@pytest.mark.parametrize("moved", [True, False], ids=["branch-moved", "branch-unchanged"])
def test_a_corrupted_cache_is_cloned_again(vumi, repo, base_dir, moved):
    vumi.deploy(ENV)
    cache = env_root(base_dir) / "shared" / "repositories" / "vumi" / ".git"
    sample.git(cache.parent, "repack", "-a", "-d", "-q")
    for pack in (cache / "objects" / "pack").glob("*.pack"):
        pack.unlink()  # a disk that lost a file
    if moved:  # the fetch brings the new commit, whose unchanged files are the lost ones
        sample.commit_file(repo, ENV, "NEWS", "next\n", "next")
    assert vumi.deploy(ENV)["revision"] == sample.git(repo, "rev-parse", ENV)
    assert vumi.deploy(ENV)["revision"] == sample.git(repo, "rev-parse", ENV)  # and stays usable


def test_prune_keeps_what_rollback_goes_back_to(vumi, repo, base_dir):
    """keep_releases 2: deploy A, B, C; roll back to B; deploy D: B stays, C (the bad one) goes."""
    names = []
    for step in "ABC":
        sample.commit_file(repo, ENV, "NEWS", f"{step}\n", step)
        names.append(vumi.deploy(ENV, keep_releases=2)["release"])
    a, b, c = names
    assert vumi.rollback(ENV, keep_releases=2)["release"] == b
    sample.commit_file(repo, ENV, "NEWS", "D\n", "D")
    d = vumi.deploy(ENV, keep_releases=2)["release"]
    assert release_dirs(base_dir) == [b, d]
    assert vumi.rollback(ENV)["release"] == b


def test_ansistrano_remove_rolled_back(vumi, repo, base_dir):
    first = vumi.deploy(ENV)["release"]
    sample.commit_file(repo, ENV, "NEWS", "bad\n", "bad")
    bad = vumi.deploy(ENV)["release"]
    vumi.rollback(ENV, remove_rolled_back=True)
    assert release_dirs(base_dir) == [first] and bad not in os.listdir(env_root(base_dir) / "releases")


def test_ansistrano_git_submodules_are_checked_out(vumi, repo, test_top, deploy_user):
    lib = test_top / "sublib"
    lib.mkdir()
    sample.git(lib, "init", "--quiet", "-b", "main")
    (lib / "VERSION").write_text("sub 1.0\n")
    sample.git(lib, "add", "VERSION")
    sample.git(lib, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "sub")
    sample.git(repo, "checkout", "--quiet", ENV)
    sample.git(repo, "-c", "protocol.file.allow=always", "submodule", "--quiet", "add", str(lib), "vendor/sublib")
    sample.git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "a submodule")
    users.give(lib, deploy_user)  # the deploy user's git clones it
    users.give(repo, deploy_user)
    deployed = vumi.deploy(ENV)
    assert (pathlib.Path(deployed["path"]) / "vumi" / "vendor" / "sublib" / "VERSION").read_text() == "sub 1.0\n"


def test_execute_keeps_a_bounded_part_of_a_huge_output(vumi):
    import resource  # pylint: disable=import-outside-toplevel

    vumi.deploy(ENV)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ran = vumi.execute(ENV, "echo first; head -c 300000000 /dev/zero | tr '\\0' x; echo; echo last; echo oops >&2")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert ran["retcode"] == 0 and ran["truncated"] == ["stdout"]
    assert ran["stdout"].startswith("first\n") and ran["stdout"].endswith("\nlast")
    assert "bytes left out" in ran["stdout"] and len(ran["stdout"]) <= (1 << 20) + 200
    assert ran["stderr"] == "oops"
    assert grown_mb < 100, f"the job grew by {grown_mb:.0f} MB for 300 MB of output"


def test_capistrano_repo_tree_ansistrano_git_repo_tree(vumi, repo, tmp_path):
    sample.git(repo, "checkout", "--quiet", ENV)
    app = repo / "src" / "app"
    (app / "config").mkdir(parents=True)
    (app / "config" / "requirements.pip").write_text("# nothing to install\n")
    (app / "hello.txt").write_text("from the subfolder\n")
    sample.git(repo, "add", "src")
    sample.git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "the app in src/app")
    deployed = vumi.deploy(ENV, repo_tree="src/app")
    ran = vumi.execute(ENV, "cat hello.txt; test -L logs && echo linked", repo_tree="src/app")
    assert ran["stdout"] == "from the subfolder\nlinked"
    assert (pathlib.Path(deployed["path"]) / "vumi" / "src" / "app" / "logs").is_symlink()
    # a repo_tree the repository makes a link (out of the checkout) is refused
    os.symlink(tmp_path, repo / "src" / "out")
    sample.git(repo, "add", "src/out")
    sample.git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "a link out")
    with pytest.raises(CommandExecutionError, match="repo_tree 'src/out' is not a folder"):
        vumi.deploy(ENV, repo_tree="src/out")


def test_ansistrano_shallow_clone_with_a_pinned_older_revision(vumi, repo, base_dir):
    old = sample.git(repo, "rev-parse", ENV)
    for n in range(3):
        sample.commit_file(repo, ENV, "NEWS", f"{n}\n", f"commit {n}")
    url = f"file://{repo}"  # git ignores --depth for a plain local path
    deployed = vumi.deploy(ENV, git_depth=1, repo_url=url)
    cache = env_root(base_dir) / "shared" / "repositories" / "vumi"
    assert sample.git(cache, "rev-parse", "--is-shallow-repository") == "true"
    assert deployed["revision"] == sample.git(repo, "rev-parse", ENV)
    assert sample.git(cache, "rev-list", "--count", deployed["revision"]) == "1"  # the tip alone, not its 4 commits
    pinned = vumi.deploy(ENV, git_depth=1, repo_url=url, revision=old)  # not in the shallow history: fetched
    assert pinned["revision"] == old


def test_publish_refuses_a_release_older_than_current(vumi, repo, base_dir):
    """An orchestrated publish that lands after a newer state.apply must not go back in time."""
    prepared = vumi.prepare(ENV)["release"]
    sample.commit_file(repo, ENV, "NEWS", "newer\n", "newer")
    newer = vumi.deploy(ENV)["release"]  # a plain state.apply meanwhile
    with pytest.raises(
        CommandExecutionError, match=f"release {prepared} does not sort after the current release {newer}"
    ):
        vumi.publish(ENV, prepared)
    assert current_target(base_dir) == f"releases/{newer}"


def test_credentials_in_repo_url_reach_no_output_or_file_others_can_read(vumi, base_dir):
    """The URL's password is in no error, no history line, no settings output."""
    url = "http://deploy:hunter2@127.0.0.1:9/app.git"  # nothing listens: the fetch fails
    with pytest.raises(CommandExecutionError) as failed:
        vumi.deploy(ENV, repo_url=url)
    assert "hunter2" not in str(failed.value) and "deploy:****@127.0.0.1" in str(failed.value)
    history_file = env_root(base_dir) / "history.log"
    assert "hunter2" not in history_file.read_text() and "deploy:****@" in history_file.read_text()
    assert oct(history_file.stat().st_mode & 0o777) == "0o640"
    assert vumi.settings(ENV, repo_url=url)["repo_url"] == "http://deploy:****@127.0.0.1:9/app.git"
    assert vumi.settings(ENV, repo_url=url, show_secrets=True)["repo_url"] == url
    checked = vumi.check(ENV, repo_url=url)
    assert "hunter2" not in json.dumps(checked) and not checked["checks"]["repository"]["ok"]


def test_dokku_releases_capistrano_revisions_log_read_back(vumi, repo, base_dir, minion_opts):
    """``vumi.history staging 5`` after two deploys, a failure, a rollback and a lock: five rows, newest first."""
    first = vumi.deploy(ENV)
    sample.commit_file(repo, ENV, "CHANGES", "second\n", "The second deploy")
    second = vumi.deploy(ENV)
    with pytest.raises(CommandExecutionError):
        vumi.deploy(ENV, hooks={"before_publish": ["echo nope; exit 3"]})
    vumi.rollback(ENV, restart=False)
    vumi.lock(ENV, reason="incident 7")
    rows = vumi.history(ENV, 5)
    assert [r["action"] for r in rows] == ["lock", "rollback", "failed", "deploy", "deploy"], rows
    lock, rollback, failed, deployed, earlier = rows
    assert lock["outcome"] == "locked: incident 7"
    assert (rollback["release"], rollback["outcome"]) == (first["release"], f"rolled back (was {second['release']})")
    assert failed["outcome"].startswith("failed at hooks: before_publish hook 'echo nope; exit 3' failed"), failed
    assert (deployed["release"], deployed["subject"]) == (second["release"], "The second deploy")
    assert deployed["revision"] == sample.git(repo, "rev-parse", f"refs/heads/{ENV}")
    assert deployed["duration"] > 0 and deployed["user"] and deployed["minion"] == minion_opts["id"]
    assert earlier["release"] == first["release"] and earlier["outcome"] == "deployed"
    assert [r["action"] for r in vumi.history(ENV)][-1] == "deploy" and len(vumi.history(ENV, 2)) == 2
    for bad in (0, -1, "5", True, 1001):
        with pytest.raises(SaltInvocationError, match=f"invalid limit {bad!r}"):
            vumi.history(ENV, bad)


NOTE_MIGRATION = """from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="Note",
            fields=[("id", models.BigAutoField(auto_created=True, primary_key=True)), ("text", models.TextField())],
        ),
    ]
"""


def test_capistrano_rails_110_a_rollback_across_a_migration_is_refused_naming_it(vumi, repo):
    """Release 2 adds a migration; 3 changes code only. 3 → 1 is refused, or forced; 3 → 2 goes."""
    hooks = {"before_publish": ["./manage.py migrate --noinput"]}
    first = vumi.deploy(ENV, hooks=hooks)
    sample.commit_file(repo, ENV, "pages/migrations/0002_note.py", NOTE_MIGRATION, "A table of notes")
    second = vumi.deploy(ENV, hooks=hooks)
    sample.commit_file(repo, ENV, "CHANGES", "code only\n", "Code only")
    vumi.deploy(ENV, hooks=hooks)
    preview = vumi.rollback(ENV, release=first["release"], dry_run=True, hooks=hooks)
    assert preview["migrated"] == [{"release": second["release"], "migrations": ["pages.0002_note"]}], preview
    with pytest.raises(CommandExecutionError) as refused:
        vumi.rollback(ENV, release=first["release"], restart=False, hooks=hooks)
    said = str(refused.value)
    print("\nrefused:", said)
    assert f"release {second['release']} applied pages.0002_note" in said and "force=True" in said
    assert vumi.rollback(ENV, release=second["release"], restart=False, hooks=hooks)["release"] == second["release"]
    assert vumi.rollback(ENV, release=first["release"], dry_run=True)["refused"], "2 → 1 crosses it too"
    forced = vumi.rollback(ENV, release=first["release"], restart=False, force=True, hooks=hooks)
    assert forced["release"] == first["release"]
