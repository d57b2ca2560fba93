"""``salt/_utils/vumi_layout.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import os

import pytest
from salt.exceptions import CommandExecutionError

import vumi_layout


def test_the_tree_is_predicted_then_made_and_a_planted_link_refused(cfg, paths, tmp_path):
    assert vumi_layout.ensure_tree(cfg, paths, test=True)["created"] == paths.tree()
    assert not os.path.exists(paths.root)
    assert vumi_layout.ensure_tree(cfg, paths)["created"] == paths.tree()
    assert vumi_layout.ensure_tree(cfg, paths)["created"] == []
    os.rmdir(paths.pids)
    os.symlink(tmp_path, paths.pids)
    with pytest.raises(CommandExecutionError, match="is a symlink"):
        vumi_layout.ensure_tree(cfg, paths)
