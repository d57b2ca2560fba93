"""``salt/_utils/vumi_files.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import os

import pytest

import vumi_files


def test_symlink_atomic_replaces_by_rename_and_write_atomic_never_follows(tmp_path):
    vumi_files.symlink_atomic("a", str(tmp_path / "link"))
    inode = os.lstat(tmp_path / "link").st_ino
    vumi_files.symlink_atomic("b", str(tmp_path / "link"))
    assert os.readlink(tmp_path / "link") == "b" and os.lstat(tmp_path / "link").st_ino != inode
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    os.symlink(victim, tmp_path / f"file.tmp-{os.getpid()}")  # planted at the temporary name
    with pytest.raises(OSError):
        vumi_files.write_atomic(str(tmp_path / "file"), "new")
    assert victim.read_text() == "untouched"
