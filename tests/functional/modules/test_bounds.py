"""
Every wait is bounded, and nothing the user's code starts outlives the deploy: a hook
that never ends (``hook_timeout``, a line's own ``timeout``), a hook that leaves a
process behind (``worker &``, a double fork into a session of its own), ``execute``
with a ``timeout``. And a full disk (a real tmpfs, filled by the user) leaves the
operator able to lock, roll back and clean up, which is what frees the space; a deploy
that hits it names its stage.

As a throw-away deploy user: the orphans of what a hook starts are the dropped child's
to reap (it is their subreaper).
"""

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from salt.exceptions import CommandExecutionError

from support.privileges import ENV, SKIPS, as_user, bounded, commit, site, top, user  # noqa: F401  (fixtures)

pytestmark = SKIPS


def sleepers(marker):
    """The pids of every process whose command line is ``sleep <marker>``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    if fh.read().split(b"\0")[:2] == [b"sleep", str(marker).encode()]:
                        found.append(int(name))
    return found


@pytest.fixture
def no_sleepers():
    """The markers a test uses; any ``sleep <marker>`` left at its end fails it (and is killed)."""
    markers = []
    yield markers
    left = {m: sleepers(m) for m in markers}
    for pids in left.values():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert left == {m: [] for m in markers}, f"processes a hook started outlived the deploy: {left}"


def test_what_a_hook_leaves_behind_neither_holds_the_deploy_nor_outlives_it(site, user, no_sleepers):
    no_sleepers.extend([10017, 10018])
    commit(site, user, "NEWS", "background\n", "a commit for background hooks")
    hooks = {"before_publish": ["sleep 10017 &", "setsid sleep 10018 > /dev/null 2>&1 &", "echo done"]}
    with bounded(120, "a deploy with background hooks"):
        res = site.vumi.deploy(ENV, hooks=hooks)
    assert res["action"] == "deploy"


def test_a_hook_past_its_time_is_killed_and_fails_the_deploy_naming_it(site, user, no_sleepers):
    no_sleepers.extend([10019, 10020])
    commit(site, user, "NEWS", "forever\n", "a commit for a hook that never ends")
    before = os.readlink(site.root / "current")
    hooks = {"before_publish": ["sleep 10019 &", "sleep 10020"]}
    started = time.monotonic()
    with bounded(120, "a deploy with a hook that never ends"), pytest.raises(CommandExecutionError) as exc:
        site.vumi.deploy(ENV, hooks=hooks, hook_timeout=5)
    took = time.monotonic() - started
    print(f"\n[bounds] a hook of 'sleep 10020' with hook_timeout 5: the deploy failed after {took:.1f}s")
    assert "stage 'hooks'" in str(exc.value) and "'sleep 10020'" in str(exc.value), exc.value
    assert "within 5s" in str(exc.value)
    assert took < 60  # the bound is the hook's 5 s; a loaded machine adds the deploy's own seconds
    assert os.readlink(site.root / "current") == before  # nothing published


def test_a_lines_own_timeout_overrides_hook_timeout(site, user, no_sleepers):
    no_sleepers.append(10021)
    commit(site, user, "NEWS", "own timeout\n", "a commit for a hook with its own timeout")
    hooks = {"before_publish": [{"run": "sleep 10021", "timeout": 2}]}
    with (
        bounded(120, "a deploy"),
        pytest.raises(CommandExecutionError, match=r"'sleep 10021' did not finish within 2s"),
    ):
        site.vumi.deploy(ENV, hooks=hooks, hook_timeout=600)


def test_execute_with_a_timeout_is_killed_with_all_it_started(site, no_sleepers):
    no_sleepers.extend([10022, 10023])
    with bounded(60, "execute"), pytest.raises(CommandExecutionError, match=r"did not finish within 3s"):
        site.vumi.execute(ENV, "sleep 10022 & sleep 10023", timeout=3)
    assert site.vumi.execute(ENV, "echo fine", timeout=30)["stdout"] == "fine"


# --------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------


@pytest.fixture
def full_disk(site, user, top):
    """``staging`` of the same user on a real tmpfs of its own (three releases), then filled by the user."""
    mount = pathlib.Path(tempfile.mkdtemp(prefix="tmpfs-", dir=top))
    os.chmod(mount, 0o755)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m,mode=0755", "tmpfs", str(mount)],
                      capture_output=True, check=False).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here")
    settings = dict(site.settings, base_dir=str(mount))
    site.loaders.use(settings)
    try:
        for index in range(3):
            commit(site, user, "NEWS", f"on tmpfs {index}\n", f"a commit on tmpfs {index}")
            site.vumi.deploy(ENV)
        commit(site, user, "NEWS", "prepared\n", "a commit a fleet deploy prepared")
        site.prepared = site.vumi.prepare(ENV)["release"]  # never published: vumi.discard's to remove
        root = mount / "vumi" / ENV
        filler = root / "shared" / "filler"
        as_user(user, "dd", "if=/dev/zero", f"of={filler}", "bs=1M")  # until the disk is full
        assert shutil.disk_usage(mount).free < 64 << 10
        yield root, mount
    finally:
        site.loaders.use(site.settings)
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def test_on_a_full_disk_lock_rollback_discard_and_cleanup_work(site, full_disk):
    root, mount = full_disk
    before = os.readlink(root / "current")
    locked = site.vumi.lock(ENV, reason="disk full")
    assert locked["locked"] and site.vumi.locked(ENV)["reason"] == "disk full"
    with pytest.raises(CommandExecutionError, match="locked by"):
        site.vumi.deploy(ENV)
    assert site.vumi.unlock(ENV)["was"]["reason"] == "disk full"
    rolled = site.vumi.rollback(ENV, restart=False)
    assert os.readlink(root / "current") != before and rolled["previous"] == os.path.basename(before)
    actions = [line for line in (root / "history.log").read_text().splitlines() if '"rollback"' in line]
    assert actions, "the rollback was not recorded"
    assert site.vumi.discard(ENV, site.prepared)["discarded"] is True
    assert not (root / "releases" / site.prepared).exists()
    free = shutil.disk_usage(mount).free
    cleaned = site.vumi.cleanup(ENV, limit=1)
    assert cleaned["removed"] and shutil.disk_usage(mount).free > free, (cleaned, free)
    print(f"\n[bounds] full tmpfs: cleanup freed {(shutil.disk_usage(mount).free - free) >> 10} KiB")


def test_a_deploy_on_a_full_disk_names_the_stage_that_hit_it(site, user, full_disk):
    root, _ = full_disk
    before = os.readlink(root / "current")
    commit(site, user, "NEWS", os.urandom(4 << 20), "a large commit that cannot fit")
    with pytest.raises(CommandExecutionError, match=r"deploy of staging failed at stage '(fetch|cut_release)'"):
        site.vumi.deploy(ENV)
    assert os.readlink(root / "current") == before
