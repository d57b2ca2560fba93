"""``salt/_utils/vumi_history.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import os

import pytest

import vumi_history
import vumi_lock


def test_history_lines_and_a_busy_lock_names_its_holder(paths):
    os.makedirs(paths.root)
    vumi_history.record(paths, "deploy", release="r1")
    vumi_history.record(paths, "rollback", release="r0")
    assert [e["action"] for e in vumi_history.read_history(paths)] == ["deploy", "rollback"]
    with vumi_lock.flock(paths.lock, 0, RuntimeError):
        with pytest.raises(RuntimeError, match=str(os.getpid())):
            with vumi_lock.flock(paths.lock, 0.1, RuntimeError):
                pass
