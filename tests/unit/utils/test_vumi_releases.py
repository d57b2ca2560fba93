"""``salt/_utils/vumi_releases.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import os

import vumi_history
import vumi_layout
import vumi_manifest
import vumi_naming
import vumi_releases


def test_rollback_target_replays_the_history_as_a_stack(cfg, paths):
    vumi_layout.ensure_tree(cfg, paths)
    for name in ("20260101_000001", "20260101_000002", "20260101_000003"):
        os.makedirs(paths.release(name))
        vumi_manifest.write_manifest(paths, name, None, {"revision": (name.replace("_", "") * 3)[:40]})
        vumi_history.record(paths, "deploy", release=name)
    vumi_releases.publish(paths, "20260101_000003")
    assert vumi_releases.rollback_target(paths) == "20260101_000002"
    vumi_releases.publish(paths, "20260101_000002")
    vumi_history.record(paths, "rollback", release="20260101_000002", previous="20260101_000003",
                        rolled_back_from="20260101_000003")  # fmt: skip
    assert vumi_releases.rollback_target(paths) == "20260101_000001"  # further back, not forth
    assert vumi_releases.rolled_back_from(paths)["revision"] == "20260101_000003"
    assert vumi_naming.new_release_name(paths) > "20260101_000003"
