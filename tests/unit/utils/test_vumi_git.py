"""
``salt/_utils/vumi_git.py`` against a real upstream repository (a copy of the sample's)
with Salt's own ``cmd.run_all``: which commit a branch or a pin names, the cached clone a
deploy fetches into, and the release cut from it.
"""

import os
import tempfile

import pytest
from salt.exceptions import CommandExecutionError

import make_repo as sample
import vumi_git


def test_the_branch_and_a_pin_name_their_commit_upstream(salt_functions, git_cfg, paths, upstream):
    tip = sample.git(upstream, "rev-parse", "staging")
    assert vumi_git.remote_revision(salt_functions, git_cfg, paths, None) == tip
    sample.git(upstream, "tag", "v1", tip)
    assert vumi_git.remote_revision(salt_functions, git_cfg, paths, "v1") == tip
    assert vumi_git.remote_revision(salt_functions, git_cfg, paths, "f" * 40) == "f" * 40  # a full id is itself
    # a short commit id is no ref: the deploy's fetch decides; a name the remote lacks is an error
    assert vumi_git.remote_revision(salt_functions, git_cfg, paths, "deadbee") is None
    with pytest.raises(CommandExecutionError, match=rf"revision 'nosuchtag' not found in {upstream}: no such tag"):
        vumi_git.remote_revision(salt_functions, git_cfg, paths, "nosuchtag")
    with pytest.raises(CommandExecutionError, match=rf"branch 'stagin' not found in {upstream}"):
        vumi_git.remote_revision(salt_functions, dict(git_cfg, branch="stagin"), paths, None)


def test_a_file_is_looked_for_upstream_without_a_clone(salt_functions, git_cfg, upstream, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert vumi_git.has_file_upstream(salt_functions, git_cfg, "staging", "manage.py")
    assert not vumi_git.has_file_upstream(salt_functions, git_cfg, "staging", "requirements-missing.txt")
    sample.git(upstream, "tag", "v2", "staging")
    assert vumi_git.has_file_upstream(salt_functions, git_cfg, "v2", "manage.py")
    with pytest.raises(CommandExecutionError, match="git fetch"):
        vumi_git.has_file_upstream(salt_functions, git_cfg, "no-such-branch", "manage.py")
    # the throw-away repository is gone
    assert not [p for p in os.listdir(tmp_path) if p.startswith("vumi-probe-")]


def test_a_fetch_follows_the_branch_and_a_release_is_cut_at_its_commit(salt_functions, git_cfg, deploy_of, upstream):
    d = deploy_of(git_cfg, release="20261205_120000")
    vumi_git.fetch(d)
    assert d.sha == sample.git(upstream, "rev-parse", "staging")
    vumi_git.cut_release(d)
    code = d.paths.checkout(d.release)
    assert sample.git(code, "rev-parse", "HEAD") == d.sha and os.path.isfile(os.path.join(code, "manage.py"))
    # the release's clone borrows the cache's objects
    assert os.path.isfile(os.path.join(code, ".git", "objects", "info", "alternates"))

    new = sample.commit_file(upstream, "staging", "NEWS", "two\n", "second")
    again = deploy_of(git_cfg, release="20261205_120001")
    vumi_git.fetch(again)
    assert again.sha == new != d.sha


def test_a_pin_is_fetched_and_one_that_is_not_there_is_named(salt_functions, git_cfg, deploy_of, upstream):
    first = sample.git(upstream, "rev-parse", "staging")
    sample.commit_file(upstream, "staging", "NEWS", "two\n", "second")
    d = deploy_of(git_cfg, revision=first)
    vumi_git.fetch(d)
    assert d.sha == first
    missing = deploy_of(git_cfg, revision="0" * 40)
    with pytest.raises(CommandExecutionError, match=rf"revision '{'0' * 40}' is not in {upstream}"):
        vumi_git.fetch(missing)


def test_repo_tree_must_be_a_folder_of_the_commit(salt_functions, git_cfg, deploy_of):
    d = deploy_of(dict(git_cfg, repo_tree="manage.py"), release="20261205_120000")
    vumi_git.fetch(d)
    with pytest.raises(CommandExecutionError, match=r"repo_tree 'manage.py' is not a folder of"):
        vumi_git.cut_release(d)
