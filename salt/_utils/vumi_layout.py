"""
Stage ``layout``: the environment's folders, and the recovery of what a killed deploy left.
"""

import logging
import os
import shutil

from salt.exceptions import CommandExecutionError

import vumi_files
import vumi_history
import vumi_manifest
import vumi_releases
import vumi_supervisor

log = logging.getLogger(__name__)


def layout(d):
    for path in d.paths.tree():
        vumi_files.makedirs(path, d.runas, d.paths.mode(path))
    vumi_supervisor.webapp_logs(d.cfg, d.paths)
    vumi_files.keep_reserve(d.paths.reserve)
    d.previous = vumi_manifest.current_release(d.paths)
    recover(d.paths, d.runas)


def recover(paths, runas=None):
    """
    After a crash (under the deploy lock: no deploy of ours is at work here):
    drop leftover temporary links, half-made clones, git's lock files in the
    cache; set incomplete releases aside.
    """
    vumi_releases.drop_switch_leftovers(paths)
    for name in os.listdir(paths.repositories):
        if name.startswith(f"{paths.app}.clone-"):
            shutil.rmtree(os.path.join(paths.repositories, name), ignore_errors=True)
    vumi_releases.finish_removals(paths)
    # a git killed mid-fetch or mid-checkout leaves index.lock, refs/...lock: every later git fails
    git_dir = os.path.join(paths.repo, ".git")
    if os.path.islink(git_dir):
        raise CommandExecutionError(f"{git_dir} is a symlink; refusing to use the cached repository")
    for top, dirs, files in os.walk(git_dir):
        dirs[:] = [n for n in dirs if n != "objects"]
        for name in files:
            if name.endswith(".lock"):
                os.remove(os.path.join(top, name))
    # (the webapp of a health check killed with its deploy died with it: it is the job's child)
    current_name = vumi_manifest.current_release(paths)
    # complete but never recorded, and newer than current: killed after its manifest,
    # before or during its health check (older unrecorded ones are left alone)
    recorded = {
        e.get("release")
        for e in vumi_history.read_history(paths)
        if e.get("action") in ("prepare", "rollback", *vumi_releases.SWITCHED_TO_NEW)
    }
    for name in vumi_manifest.release_names(paths):
        interrupted = name not in recorded and (current_name is None or name > current_name)
        if name != current_name and (not vumi_manifest.read_manifest(paths, name) or interrupted):
            vumi_files.makedirs(paths.failed, runas)
            os.rename(paths.release(name), os.path.join(paths.failed, name))
            vumi_history.record(
                paths,
                "failed",
                stage="recover",
                release=name,
                reason="left by an interrupted deploy (incomplete, or never recorded as prepared or deployed)",
            )


def ensure_tree(cfg, paths, test=False):
    """
    The environment's folders, made as its user where missing (``test``: only
    named); a symlink planted where a folder belongs is refused before anything.
    """
    vumi_files.refuse_links(paths)
    vumi_manifest.current_release(paths)  # a current that is a folder, or points outside, is refused here too
    if test:
        return {"path": paths.root, "created": [p for p in paths.tree() if not os.path.isdir(p)]}
    runas = vumi_files.runas_user(cfg)
    created = [p for p in paths.tree() if vumi_files.makedirs(p, runas, paths.mode(p))]
    vumi_supervisor.webapp_logs(cfg, paths)
    vumi_files.keep_reserve(paths.reserve)
    return {"path": paths.root, "created": created}
