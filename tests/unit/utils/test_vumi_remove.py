"""
``salt/_utils/vumi_remove.py`` on a real tree: what an environment leaves on the host is
found and listed first, then removed; nothing is followed out of the tree, a link planted
where the environment's folder belongs is refused, and an app's folders go with its last
environment.
"""

import os

import pytest
from salt.exceptions import CommandExecutionError

import vumi_layout
import vumi_remove


@pytest.fixture
def laid_out(cfg, paths):
    vumi_layout.ensure_tree(cfg, paths)
    os.makedirs(paths.webapp_logs)
    (open(os.path.join(paths.webapp_logs, "webapp.8000.log"), "w", encoding="utf-8")).close()
    return paths


def test_the_tree_and_the_logs_are_listed_then_removed_and_nothing_outside(laid_out, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not the environment's\n")
    os.symlink(outside, os.path.join(laid_out.shared, "elsewhere"))  # a link out of the tree
    found = vumi_remove.tree(laid_out, test=True)
    assert found == [("tree", laid_out.root), ("logs", laid_out.webapp_logs)]
    assert os.path.isdir(laid_out.root)  # listed, nothing touched

    vumi_remove.empty(laid_out.root)
    assert os.listdir(laid_out.root) == [] and (outside / "keep").read_text() == "not the environment's\n"
    assert vumi_remove.tree(laid_out) == found
    assert not os.path.lexists(laid_out.root) and not os.path.lexists(laid_out.webapp_logs)
    assert not os.path.lexists(laid_out.app_dir)  # the app's last environment: its folders went too
    assert vumi_remove.tree(laid_out) == []


def test_an_app_folder_with_another_environment_stays(laid_out):
    other = os.path.join(laid_out.app_dir, "production")
    os.makedirs(other)
    vumi_remove.empty(laid_out.root)
    vumi_remove.tree(laid_out)
    assert os.path.isdir(other)


def test_a_link_where_the_folder_belongs_is_refused(paths, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    os.makedirs(paths.app_dir)
    os.symlink(target, paths.root)
    with pytest.raises(CommandExecutionError, match=f"{paths.root} is a symlink; refusing to follow it"):
        vumi_remove.tree(paths, test=True)
    with pytest.raises(CommandExecutionError, match="is not a folder; refusing to remove it"):
        vumi_remove.empty(paths.root)
    assert os.path.islink(paths.root) and target.is_dir()


def test_the_site_is_listed_then_removed(tmp_path):
    site = tmp_path / "vumi-staging.conf"
    assert vumi_remove.site(str(site)) == []
    site.write_text("server {}\n")
    assert vumi_remove.site(str(site), test=True) == [("nginx", str(site))] and site.exists()
    assert vumi_remove.site(str(site)) == [("nginx", str(site))] and not site.exists()
