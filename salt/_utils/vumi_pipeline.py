"""
The deploy as a pipeline of named stages over one context (``Deploy``).

PREPARE and PUBLISH list the stages in order; each stage is a function in the
helper named after it. A failure at any stage before ``publish`` leaves
``current`` alone and moves the half-built release to ``failed/``.
"""

import logging
import os
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_errors
import vumi_events
import vumi_files
import vumi_freeze
import vumi_git
import vumi_health
import vumi_history
import vumi_hooks
import vumi_layout
import vumi_lock
import vumi_manifest
import vumi_notify
import vumi_releases
import vumi_settings
import vumi_settings_file
import vumi_shared
import vumi_virtualenv

log = logging.getLogger(__name__)


class Deploy:
    """What the steps of one deploy share."""

    def __init__(self, salt, opts, cfg, paths, revision=None, release=None, run_once=True, who=None, hold=None):
        self.salt = salt  # Salt's functions (cmd.run_all, virtualenv.create, pip.install, event.send)
        self.opts = opts
        self.cfg = cfg
        self.paths = paths
        vumi_files.runas_user(cfg)  # checked now: a user that does not exist fails before anything is made
        revision = vumi_settings.revision(revision)  # an argument, not a setting: validated like the pin
        self.revision = revision if revision is not None else cfg["revision"]
        self.release = release
        if not isinstance(run_once, bool):
            raise SaltInvocationError(f"invalid run_once {run_once!r}: must be true or false")
        self.run_once = run_once  # hooks marked once: this host runs them (a fleet deploy picks one)
        if hold is not None and release is None:
            raise SaltInvocationError("a hold is for the fleet deploy of one release: name the release")
        self.hold = hold  # seconds: a fleet deploy of this release holds the environment that long
        self.hooks_skipped = []
        self.migrates = False  # a before_publish hook migrated the database (vumi_hooks)
        self.migrations = None  # what it applied, when it could tell (Django)
        self.cut = False  # whether this deploy made the release folder (a refused name leaves all alone)
        self.who = dict(who or {}, branch=cfg["branch"])  # for the history: who, which job, which branch
        self.sha = None
        self.req_hash = None
        self.settings_hash = None
        self.events = None  # decided at the first stage: is anyone listening?
        self.venv_built = None
        self.python = None  # (path, version) of the virtualenv's interpreter
        self.install_source = None  # what the virtualenv got: requirements.txt, uv.lock...
        self.previous = None
        self.health = None
        self.timings = {}

    @property
    def runas(self):
        """Who commands run as: the deploy user from root; None once this process is that user (as_user's child)."""
        return vumi_files.runas_user(self.cfg)


PREPARE = [
    ("layout", vumi_layout.layout),
    ("fetch", vumi_git.fetch),
    ("cut_release", vumi_git.cut_release),
    ("link_shared", vumi_shared.link_shared),
    ("settings", vumi_settings_file.write_settings),
    ("virtualenv", vumi_virtualenv.virtualenv),
    ("hooks", vumi_hooks.before_publish),
    ("manifest", vumi_releases.write_release_manifest),
    ("health", vumi_health.health),
]


PUBLISH = [
    ("publish", vumi_releases.publish_step),
    ("after_publish", vumi_hooks.after_publish),
    ("prune", vumi_releases.prune_step),
]


def run_steps(d, steps):
    for stage, step in steps:
        started = time.monotonic()
        try:
            step(d)
        except (CommandExecutionError, SaltInvocationError, OSError) as exc:
            vumi_events.event(d, stage, started, "failed", error=str(exc))
            fail(d, stage, exc)
        d.timings[stage] = round(time.monotonic() - started, 3)
        vumi_events.event(d, stage, started, "done")


def notify(d, event, **fields):
    """Pillar ``notify``'s webhooks for ``event``; a fleet run's are the master's to send."""
    if not d.cfg["notify"] or d.who.get("run"):
        return
    timings = [v for v in d.timings.values() if isinstance(v, (int, float))]
    subject = (vumi_manifest.read_manifest(d.paths, d.release) or {}).get("commit_subject") if d.cut else None
    vumi_notify.send(d.salt["http.query"], d.cfg["notify"], event, dict({
        "environment": d.cfg["environment"], "host": d.opts.get("id"), "release": d.release, "revision": d.sha,
        "subject": subject, "user": d.who.get("user"), "duration": round(sum(timings), 2) if timings else None,
    }, **fields))  # fmt: skip


def fail(d, stage, exc):
    """Move a half-built release aside, record why, and raise."""
    moved = None
    if d.cut and stage in dict(PREPARE) and d.release != vumi_manifest.current_release_safe(d.paths):
        rel = os.path.join(d.paths.releases, d.release)
        if os.path.lexists(rel):
            try:
                vumi_files.makedirs(d.paths.failed, d.runas)
                moved = os.path.join(d.paths.failed, d.release)
                os.rename(rel, moved)
            except (OSError, CommandExecutionError) as problem:  # the next deploy's vumi_layout.recover retries
                log.warning("could not move %s to %s: %s", rel, d.paths.failed, problem)
                moved = None
    if moved:
        vumi_releases.trim_failed(d.cfg, d.paths)
    if os.path.isdir(d.paths.root):
        try:
            vumi_history.record(d.paths, "failed", stage=stage, release=d.release, revision=d.sha,
                                reason=str(exc), previous=d.previous, **d.who)  # fmt: skip
        except OSError as problem:  # a full disk: the stage's own error is what the operator needs
            log.warning("could not record the failure in %s: %s", d.paths.history, problem)
    where = f"; the half-built release is kept in {moved}" if moved else ""
    message = vumi_settings.mask_credentials(
        f"deploy of {d.cfg['environment']} failed at stage {stage!r}: {exc}{where}"
    )
    notify(d, "deploy/failure", outcome=f"failed at {stage}", error=message)
    if isinstance(exc, SaltInvocationError):  # the operator's input: said as such, not as a failed deploy
        raise SaltInvocationError(message) from exc
    kind = type(exc) if isinstance(exc, vumi_errors.StageFailed) else vumi_errors.StageFailed
    raise kind(message, **dict(getattr(exc, "facts", {}), stage=stage, release=d.release, kept=moved)) from exc


def summary(d, action):
    return {
        "env": d.cfg["environment"],
        "release": d.release,
        "revision": d.sha,
        "previous": d.previous,
        "path": d.paths.release(d.release),
        "current": d.paths.current,
        "requirements_hash": d.req_hash,
        "virtualenv_built": d.venv_built,
        "install_source": d.install_source,
        "python": d.python[1] if d.python else None,
        "installer": vumi_virtualenv.built_with(d.paths.venv(d.release)) if d.release else None,
        "health": d.health,
        "timings": d.timings,
        "hooks_skipped": d.hooks_skipped,
        "action": action,
    }


def refuse(d):
    """Frozen, or held by a fleet deploy of another release: fail before anything is done."""
    vumi_freeze.refuse(d.cfg, d.paths, d.release if d.hold is not None else None)


def take_hold(d):
    if d.hold is not None:
        vumi_freeze.hold(d.cfg, d.paths, d.release, d.hold, d.who)


def prepare(d):
    """Every stage up to the health gate: a complete release, not current."""
    if d.release is not None:
        d.paths.release(d.release)
    refuse(d)
    vumi_files.makedirs(d.paths.root, d.runas)  # the tree's owner owns its root too
    with vumi_lock.deploy_lock(d.cfg, d.paths):
        refuse(d)  # again: a deploy we waited for may have been a fleet deploy's
        take_hold(d)
        if d.hold is not None:  # this fleet run holds the host: an earlier run's prepared release is never published
            vumi_releases.drop_unpublished(d.paths, keep=d.release)
        run_steps(d, PREPARE)
        vumi_history.record(d.paths, "prepare", release=d.release, revision=d.sha, timings=d.timings, **d.who)
    return summary(d, "prepare")


def publish(d):
    """Make the prepared release ``d.release`` current, then prune."""
    paths = d.paths
    paths.release(d.release)  # a bad name fails before anything else
    refuse(d)
    with vumi_lock.deploy_lock(d.cfg, paths):
        refuse(d)
        take_hold(d)  # renewed: the restarts are still to come
        if not os.path.isdir(paths.release(d.release)):
            raise SaltInvocationError(f"unknown release {d.release!r} in {paths.releases}")
        d.previous = vumi_manifest.current_release(paths)
        if d.previous is not None and d.release <= d.previous:
            # a publish that lands after a newer deploy must not take the host back to older code
            raise CommandExecutionError(
                f"release {d.release} does not sort after the current release {d.previous}; refusing to publish "
                "it (a newer deploy went live meanwhile; vumi.rollback goes back on purpose)"
            )
        d.sha = (vumi_manifest.read_manifest(paths, d.release) or {}).get("revision")
        run_steps(d, PUBLISH)
        vumi_history.record(paths, "deploy", release=d.release, revision=d.sha, previous=d.previous, **d.who)
    return summary(d, "publish")


def deploy(d):
    """Every stage: prepare, then publish and prune."""
    refuse(d)
    vumi_files.makedirs(d.paths.root, d.runas)  # the tree's owner owns its root too
    with vumi_lock.deploy_lock(d.cfg, d.paths):
        refuse(d)
        notify(d, "deploy/start", outcome="started")
        run_steps(d, PREPARE + PUBLISH)
        vumi_history.record(d.paths, "deploy", release=d.release, revision=d.sha, previous=d.previous,
                            timings=d.timings, **d.who)  # fmt: skip
    notify(d, "deploy/success", outcome=f"deployed (was {d.previous})" if d.previous else "deployed")
    return summary(d, "deploy")


UPDATE = [stage for stage in PREPARE if stage[0] not in ("layout", "fetch", "hooks", "health")] + [
    stage for stage in PUBLISH if stage[0] != "after_publish"
]


def update(d):
    """
    The branch's latest commit as a new release cut beside the current one, with the
    current one's virtualenv when the requirements did not change, then switched to
    in one rename: killed at any moment, ``current`` is one commit or the other. No
    hooks, no health check, no restart (Fabric's ``update``); see ``vumi.update``.
    """
    cfg, paths = d.cfg, d.paths
    refuse(d)
    if cfg["revision"] is not None:
        raise SaltInvocationError(
            f"{cfg['environment']} is pinned to revision {cfg['revision']}; change the pin and deploy"
        )
    with vumi_lock.deploy_lock(cfg, paths):
        refuse(d)
        name = vumi_manifest.current_release(paths)
        if name is None:
            raise CommandExecutionError(f"{cfg['environment']} has no current release to update; deploy first")
        manifest = vumi_manifest.read_manifest(paths, name) or {}
        old = manifest.get("revision")
        run_steps(d, PREPARE[:2])  # layout (and the recovery of an interrupted update), fetch
        if d.sha == old:
            return {"release": name, "previous": None, "old_revision": old, "new_revision": d.sha,
                    "changed": False, "requirements_changed": False}  # fmt: skip
        run_steps(d, UPDATE)
        vumi_history.record(paths, "update", release=d.release, revision=d.sha, previous=name,
                            previous_revision=old, **d.who)  # fmt: skip
    return {
        "release": d.release,
        "previous": name,
        "old_revision": old,
        "new_revision": d.sha,
        "changed": True,
        "requirements_changed": d.req_hash != manifest.get("requirements_hash"),
        "virtualenv_built": d.venv_built,
        "install_source": d.install_source,
        "python": d.python[1] if d.python else None,
    }
