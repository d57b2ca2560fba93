"""
Releases: manifests (stage ``manifest``), the switch of ``current`` (stage ``publish``), pruning
(stage ``prune``), rollback, cleanup and discard.
"""

import logging
import os
import shutil

from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_files
import vumi_git
import vumi_history
import vumi_lock
import vumi_manifest
import vumi_python
import vumi_settings
import vumi_settings_file
import vumi_virtualenv

log = logging.getLogger(__name__)


def release_info(paths, name, current_name):
    manifest = vumi_manifest.read_manifest(paths, name)
    info = {
        "release": name,
        "path": paths.release(name),
        "current": name == current_name,
        "state": "complete" if manifest else "incomplete",
    }
    if manifest:
        info.update({k: manifest.get(k) for k in (
            "revision", "branch", "deployed_at", "deployed_by", "commit_time", "commit_subject", "requirements_hash",
        )})  # fmt: skip
    return info


def write_release_manifest(d):
    """Written last: a release with a manifest is complete."""
    vumi_files.write_atomic(os.path.join(d.paths.release(d.release), "REVISION"), d.sha + "\n", d.runas)
    vumi_manifest.write_manifest(d.paths, d.release, d.runas, {
        "release": d.release,
        "env": d.cfg["environment"],
        "branch": d.cfg["branch"],
        "revision": d.sha,
        "pinned": d.revision,
        "repo_url": vumi_settings.mask_credentials(d.cfg["repo_url"]),
        "requirements_hash": d.req_hash,
        "settings_hash": d.settings_hash,
        "virtualenv": os.path.realpath(d.paths.venv(d.release)),
        "installer": vumi_virtualenv.built_with(d.paths.venv(d.release)),
        "install_source": d.install_source,
        "python": d.python[1] if d.python else None,
        "deployed_at": vumi_files.now().isoformat(timespec="seconds"),
        "deployed_by": d.who.get("user"),
        "migrates": d.migrates,
        # a manifest holds scalars: the migrations applied, space-separated ("" none; None: unknown)
        "migrations": None if d.migrations is None else " ".join(d.migrations)[: vumi_manifest.TEXT_LIMIT],
        **vumi_git.commit_info(d.salt, d.paths.checkout(d.release), d.sha, d.runas),
    })  # fmt: skip


def publish_step(d):
    publish(d.paths, d.release)


def publish(paths, name):
    if not vumi_manifest.read_manifest(paths, name):
        raise CommandExecutionError(f"release {name} is not complete; refusing to publish it")
    vumi_files.with_reserve(paths.reserve, vumi_files.symlink_atomic, os.path.join("releases", name), paths.current)


#: history actions that made a new release current (rollback_stack pushes them)
SWITCHED_TO_NEW = ("deploy", "update")


def finish_removals(paths):
    """Delete what a prune, cleanup or discard killed mid-way had put out of sight."""
    for name in os.listdir(paths.releases) if os.path.isdir(paths.releases) else []:
        if name.startswith(".removing-"):
            vumi_files.remove_tree(os.path.join(paths.releases, name))


def drop_switch_leftovers(paths):
    """The temporary links of a switch that was killed between its symlink and its rename."""
    for name in os.listdir(paths.root):
        if name.startswith("current.tmp-"):
            os.remove(os.path.join(paths.root, name))


def prune_step(d):
    prune(d.cfg, d.paths, d.cfg["keep_releases"])


def rollback_stack(paths):
    """The releases ``current`` went through, as rollback sees them: deploys push, rollbacks pop."""
    stack = []
    for entry in vumi_history.read_history(paths):
        if entry.get("action") in SWITCHED_TO_NEW:
            stack.append(entry.get("release"))
        elif entry.get("action") == "rollback":
            if entry.get("named"):
                stack.append(entry.get("release"))
            else:
                while stack and stack[-1] != entry.get("release"):
                    stack.pop()
    return stack


def rollback_target(paths):
    """The release before the current one on the rollback stack, if it is still complete."""
    stack = rollback_stack(paths)
    current_name = vumi_manifest.current_release(paths)
    while stack and stack[-1] == current_name:
        stack.pop()
    for name in reversed(stack):
        if name != current_name and vumi_manifest.read_manifest(paths, name):
            return name
    return None


def unpublished_releases(paths):
    """Releases the history says were prepared and never made current (publish, rollback)."""
    prepared, published = set(), set()
    for entry in vumi_history.read_history(paths):
        if entry.get("action") == "prepare":
            prepared.add(entry.get("release"))
        elif entry.get("action") in SWITCHED_TO_NEW + ("rollback",):
            published.add(entry.get("release"))
    return prepared - published


def drop_unpublished(paths, keep=None):
    """
    Remove the releases prepared and never published (but ``keep``): an earlier
    fleet run's, which it can no longer publish. Under the deploy lock.
    """
    current_name = vumi_manifest.current_release(paths)
    removed = []
    for name in sorted((unpublished_releases(paths) & set(vumi_manifest.release_names(paths))) - {current_name, keep}):
        vumi_files.remove_tree(paths.release(name))
        removed.append(name)
    return removed


def prune(cfg, paths, limit, unpublished=False):
    """
    Remove all but the newest ``limit`` complete releases (never current), then
    orphans. With ``unpublished``, first the releases prepared but never published
    (not in a deploy's own prune: a fleet deploy may be about to publish them).
    """
    removed = drop_unpublished(paths) if unpublished else []
    current_name = vumi_manifest.current_release(paths)
    complete = [n for n in vumi_manifest.release_names(paths) if vumi_manifest.read_manifest(paths, n)]
    # the newest on the rollback stack first (what rollback would go back to, not a release
    # rolled back from), then by name; prepared, unpublished ones are a fleet deploy's to publish
    stack = rollback_stack(paths) + ([current_name] if current_name else [])  # this deploy's is not recorded yet
    order = [n for n in dict.fromkeys(reversed(stack)) if n in complete]
    order += [n for n in reversed(complete) if n not in order]
    if complete and current_name != complete[-1]:
        order = [n for n in order if n != current_name]  # an older current is kept in addition
    keep = set(order[:limit]) | {current_name}
    if not unpublished:
        keep |= unpublished_releases(paths)
    for name in vumi_manifest.release_names(paths):
        if name not in keep and (name in complete or name != current_name):
            vumi_files.remove_tree(paths.release(name))
            removed.append(name)
    trim_failed(cfg, paths)
    in_use = {os.path.realpath(paths.venv(n)) for n in vumi_manifest.release_names(paths)}
    venvs_removed = []
    if os.path.isdir(paths.virtualenvs):
        for name in sorted(os.listdir(paths.virtualenvs)):
            path = os.path.join(paths.virtualenvs, name)
            if os.path.realpath(path) not in in_use:
                vumi_files.remove_tree(path)
                venvs_removed.append(name)
    return {
        "removed": removed,
        "kept": [n for n in vumi_manifest.release_names(paths)],
        "virtualenvs_removed": venvs_removed,
    }


def trim_failed(cfg, paths):
    """Keep the newest ``keep_failed`` failed releases, and as many failed health checks' logs."""
    failed = sorted(os.listdir(paths.failed)) if os.path.isdir(paths.failed) else []
    for name in failed[: max(0, len(failed) - cfg["keep_failed"])]:
        shutil.rmtree(os.path.join(paths.failed, name), ignore_errors=True)
    if os.path.isdir(paths.logs):
        logs = [os.path.join(paths.logs, n) for n in os.listdir(paths.logs) if n.startswith("webapp.health.")]
        logs = sorted((p for p in logs if os.path.isfile(p) and not os.path.islink(p)), key=os.path.getmtime)
        for path in logs[: max(0, len(logs) - cfg["keep_failed"])]:
            os.remove(path)


def list_releases(paths):
    """Every release, oldest first, with its revision, time and state."""
    current_name = vumi_manifest.current_release(paths)
    return [release_info(paths, name, current_name) for name in vumi_manifest.release_names(paths)]


def describe_current(salt, cfg, paths):
    """The current release's manifest and what a redeploy would change, or None (run as the deploy user)."""
    name = vumi_manifest.current_release(paths)
    if name is None:
        return None
    manifest = vumi_manifest.read_manifest(paths, name) or {}
    code = paths.code(name)
    try:
        python = vumi_python.find(salt, cfg, None, code)
        requirements_changed = vumi_virtualenv.requirements_hash(cfg, code, python) != manifest.get("requirements_hash")
    except CommandExecutionError:
        requirements_changed = True
    return dict(
        manifest,
        release=name,
        path=paths.release(name),
        code=code,
        virtualenv_ok=vumi_virtualenv.venv_ok(paths.venv(name)),
        requirements_changed=requirements_changed,
        settings_changed=vumi_settings_file.settings_file(cfg)[1] != manifest.get("settings_hash"),
        rolled_back_from=rolled_back_from(paths),
    )


def rollback_plan(cfg, paths, release=None):
    """The release a rollback would make current, refused as ``rollback`` refuses it; changes nothing."""
    if release is not None:
        paths.release(release)  # a bad name fails before anything else
    vumi_lock.deployed(cfg, paths)
    if release is None:
        target = rollback_target(paths)
        if target is None:
            raise CommandExecutionError(f"{cfg['environment']} has no earlier release to roll back to")
    else:
        target = vumi_manifest.resolve_release(paths, release)
    if not vumi_virtualenv.venv_ok(paths.venv(target)):
        raise CommandExecutionError(f"release {target} has no intact virtualenv; run vumi.create_virtualenv")
    return target


def migrated_since(paths, target):
    """
    The releases a rollback to ``target`` goes back across (after it, up to the current
    one) whose hooks migrated the database: [{"release", "migrations"}], oldest first.
    """
    current_name = vumi_manifest.current_release(paths)
    crossed = [n for n in vumi_manifest.release_names(paths) if target < n <= (current_name or "")]
    found = []
    for name in crossed:
        manifest = vumi_manifest.read_manifest(paths, name) or {}
        applied = manifest.get("migrations")
        applied = applied.split() if isinstance(applied, str) else None
        # migrations it applied; or, when it could not tell (not Django), that a hook migrated
        if applied or (manifest.get("migrates") and applied is None):
            found.append({"release": name, "migrations": applied})
    return found


def migration_problem(cfg, paths, target):
    """Why a rollback to ``target`` would leave the code older than the schema, or None."""
    crossed = migrated_since(paths, target)
    if not crossed:
        return None
    said = "; ".join(f"release {c['release']} applied {', '.join(c['migrations'] or []) or 'migrations'}"
                     for c in crossed)  # fmt: skip
    return (f"rolling {cfg['environment']} back to release {target} goes back across database migrations: {said}. "
            "The schema stays migrated; the older code may not run on it. force=True rolls back all the same "
            "(reverse the migrations first: ./manage.py migrate <app> <migration>)")  # fmt: skip


def rollback_preview(cfg, paths, release=None):
    """What ``vumi.rollback`` would do, changing nothing: the release it goes to and the migrations it crosses."""
    target = rollback_plan(cfg, paths, release)
    return {"release": target, "previous": vumi_manifest.current_release(paths),
            "migrated": migrated_since(paths, target), "refused": migration_problem(cfg, paths, target)}  # fmt: skip


def rollback(cfg, paths, release=None, who=None, force=False):
    """
    Make the previous (or the named) release current again, as the deploy user (the
    restart of the webapps onto it is root's: ``vumi_webapp.restart_running``); see
    ``vumi.rollback``.
    """
    if release is not None:
        paths.release(release)  # a bad name fails before anything else
    with vumi_lock.deploy_lock(cfg, paths):
        previous = vumi_manifest.current_release(paths)
        target = rollback_plan(cfg, paths, release)
        problem = migration_problem(cfg, paths, target)
        if problem and not force:
            raise CommandExecutionError(problem)
        publish(paths, target)
        manifest = vumi_manifest.read_manifest(paths, target) or {}
        # the revision rolled back from: vumi.deployed holds off it until the branch moves on
        left = (vumi_manifest.read_manifest(paths, previous) or {}) if previous else {}
        vumi_history.record(paths, "rollback", release=target, previous=previous,
                            revision=manifest.get("revision"), named=release is not None,
                            rolled_back_from=left.get("revision"), pinned=cfg["revision"],
                            branch=cfg["branch"], **(who or {}))  # fmt: skip
        if cfg["remove_rolled_back"] and previous and previous != target:
            vumi_files.remove_tree(paths.release(previous))
    return {"release": target, "previous": previous, "revision": manifest.get("revision"), "restarted": []}


def rolled_back_from(paths):
    """
    When the latest switch of ``current`` was a rollback: the release and revision
    it left, and the pin in force then; else None.
    """
    for entry in reversed(vumi_history.read_history(paths)):
        if entry.get("action") in SWITCHED_TO_NEW:
            return None
        if entry.get("action") == "rollback":
            if not entry.get("rolled_back_from"):
                return None
            return {"release": entry.get("previous"), "revision": entry["rolled_back_from"],
                    "pinned": entry.get("pinned")}  # fmt: skip
    return None


def cleanup(cfg, paths, limit=None):
    """Prune to ``limit`` releases (default ``keep_releases``), unpublished ones first; see ``vumi.cleanup``."""
    limit = cfg["keep_releases"] if limit is None else limit
    if isinstance(limit, bool) or not str(limit).isdigit() or int(limit) < 1:
        raise SaltInvocationError(f"invalid limit {limit!r}: must be an integer >= 1")
    if not os.path.isdir(paths.root):
        return {"removed": [], "kept": [], "virtualenvs_removed": []}
    with vumi_lock.deploy_lock(cfg, paths):
        drop_switch_leftovers(paths)
        finish_removals(paths)
        return prune(cfg, paths, int(limit), unpublished=True)


def discard(cfg, paths, release):
    """Remove one prepared, never published release; see ``vumi.discard``."""
    path = paths.release(release)  # a bad name fails before anything else
    if not os.path.isdir(paths.root):
        return {"release": release, "discarded": False, "comment": f"{cfg['environment']} is not deployed here"}
    with vumi_lock.deploy_lock(cfg, paths):
        finish_removals(paths)
        if not os.path.isdir(path):
            return {"release": release, "discarded": False, "comment": f"no release {release} here"}
        if release == vumi_manifest.current_release(paths):
            raise CommandExecutionError(f"release {release} is current; refusing to discard it")
        if release not in unpublished_releases(paths) and vumi_manifest.read_manifest(paths, release):
            raise CommandExecutionError(
                f"release {release} has been published before; refusing to discard it (see vumi.cleanup)"
            )
        revision = (vumi_manifest.read_manifest(paths, release) or {}).get("revision")
        # out of sight in one rename, then deleted: killed mid-way, nothing left looks complete
        vumi_files.remove_tree(path)
        vumi_history.record(paths, "discard", release=release, revision=revision)
    return {"release": release, "discarded": True, "revision": revision,
            "comment": f"release {release} discarded"}  # fmt: skip


def revert(cfg, paths, release, who=None):
    """A fleet deploy's undo here: ``release`` current → the release before it (no restart); see ``vumi.revert``."""
    paths.release(release)  # a bad name fails before anything else
    now = vumi_manifest.current_release_safe(paths)
    if now != release:
        return {"reverted": False, "release": now, "comment": f"release {release} is not current here ({now})"}
    res = rollback(cfg, paths, None, who=who)
    return dict(res, reverted=True, comment=f"release {res['release']} is current again (was {release})")


#: the history's entries an operator reads back (vumi.history): what changed what serves, or tried to
SHOWN = ("deploy", "update", "rollback", "failed", "discard", "lock", "unlock")


def history_rows(paths, limit):
    """
    The last ``limit`` deploys, updates, rollbacks, failures, discards and locks,
    newest first: time, who (user, minion, Salt job, fleet run), release, commit and
    its subject, outcome, duration (seconds, when its stages were timed).
    """
    entries = [e for e in vumi_history.read_history(paths) if e.get("action") in SHOWN][-limit:]
    subjects = {}
    rows = []
    for entry in reversed(entries):
        release = entry.get("release")
        if release and release not in subjects:
            try:
                subjects[release] = (vumi_manifest.read_manifest(paths, release) or {}).get("commit_subject")
            except (SaltInvocationError, CommandExecutionError):
                subjects[release] = None  # a name this tree no longer takes: no subject
        timings = entry.get("timings") if isinstance(entry.get("timings"), dict) else {}
        seconds = [v for v in timings.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        rows.append({
            "time": entry.get("time"), "action": entry["action"], "user": entry.get("user"),
            "minion": entry.get("minion"), "jid": entry.get("jid"), "run": entry.get("run"),
            "release": release, "revision": entry.get("revision"), "subject": subjects.get(release),
            "outcome": _outcome(entry), "duration": round(sum(seconds), 2) if seconds else None,
        })  # fmt: skip
    return rows


def _outcome(entry):
    """What an entry of the history did, in a few words."""
    action, previous = entry["action"], entry.get("previous")
    if action == "failed":
        reason = str(entry.get("reason") or "").strip().splitlines()
        return f"failed at {entry.get('stage')}: {reason[0][:200] if reason else 'no reason recorded'}"
    if action == "lock":
        return f"locked: {entry.get('reason')}"
    if action == "unlock":
        return "unlocked"
    if action == "discard":
        return "discarded (never published)"
    verb = {"deploy": "deployed", "update": "updated", "rollback": "rolled back"}[action]
    return f"{verb} (was {previous})" if previous else verb
