"""``salt/_utils/vumi_hooks.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import os
import pathlib
import types

import pytest
from salt.exceptions import CommandExecutionError

import vumi_hooks
import vumi_settings


def test_hooks_run_in_the_code_folder_and_a_failure_names_the_line(cfg, paths):
    name = "20260101_000001"
    os.makedirs(paths.code(name))
    d = types.SimpleNamespace(
        salt={}, cfg=dict(cfg, hooks=vumi_settings.hooks({"before_publish": [
            "pwd > out", {"run": "touch once", "once": True}, "echo boom >&2; exit 2"]})),
        paths=paths, release=name, runas=None, run_once=False, hooks_skipped=[], timings={}, events=False,
    )  # fmt: skip
    with pytest.raises(
        CommandExecutionError, match=r"before_publish hook 'echo boom >&2; exit 2' failed \(exit 2\): boom"
    ):
        vumi_hooks.before_publish(d)
    assert pathlib.Path(paths.code(name), "out").read_text().strip() == paths.code(name)
    assert d.hooks_skipped == ["before_publish[1]"] and not os.path.exists(os.path.join(paths.code(name), "once"))
