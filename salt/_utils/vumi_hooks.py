"""
Stages ``hooks`` and ``after_publish``: pillar's shell lines run in the new
release (its code folder, virtualenv, settings and ``env``), as the deploy user.

``before_publish`` runs after the virtualenv, before the health check and the
switch (``./manage.py migrate``, ``collectstatic``): a failure there is a failed
deploy, and ``current`` and the running webapps are untouched. ``after_publish``
runs once the release is current. An entry marked ``once`` runs on one host of
a fleet deploy (the orchestration passes ``run_once=False`` to the others).
Each line has ``hook_timeout`` seconds (its own ``timeout``); then it is killed with
its whole process group, and the deploy fails at its stage. A ``before_publish`` line
that migrates (``migrates: true``, or a ``manage.py migrate`` line) marks the release as
migrating; for Django, ``showmigrations --plan`` before and after it names what it applied.
A line with ``maintenance: true`` runs with the maintenance page up (nginx answers 503).
"""

import os
import time

from salt.exceptions import CommandExecutionError

import vumi_commands
import vumi_environment
import vumi_events
import vumi_files
import vumi_freeze


def run(d, stage):
    """Run the ``stage`` hooks of ``d.cfg`` in release ``d.release``, each timed and announced."""
    code = d.paths.code(d.release)
    for index, hook in enumerate(d.cfg["hooks"][stage]):
        label = f"{stage}[{index}]"
        if hook["once"] and not d.run_once:
            d.hooks_skipped.append(label)  # once, and another host of the fleet runs it
            continue
        env = vumi_environment.for_release(d.cfg, d.paths, d.release)
        if guarded(hook, code, d.runas, env):
            d.hooks_skipped.append(label)  # creates: made already, or unless: true
            continue
        started = time.monotonic()
        migrating = hook["migrates"] and stage == "before_publish"
        before = applied(code, d.runas, env) if migrating else None
        res = with_maintenance(d, code, hook, env)
        if migrating:  # recorded in the manifest: a rollback past this release names what it applied
            d.migrates = True
            after = applied(code, d.runas, env) if before is not None else None
            d.migrations = sorted(set(d.migrations or []) | (after - before)) if after is not None else d.migrations
        d.timings[label] = round(time.monotonic() - started, 3)
        outcome = "done" if res["retcode"] == 0 and not res["timed_out"] else "failed"
        vumi_events.event(d, "hooks", started, outcome, hook=hook["run"], hook_stage=stage, index=index)
        if res["timed_out"]:
            raise CommandExecutionError(
                f"{stage} hook {hook['run']!r} did not finish within {hook['timeout']:g}s (hook_timeout); "
                f"it was killed with every process it started: {vumi_files.output_tail(res)}"
            )
        if res["retcode"] != 0:
            raise CommandExecutionError(
                f"{stage} hook {hook['run']!r} failed (exit {res['retcode']}): {vumi_files.output_tail(res)}"
            )


def with_maintenance(d, code, hook, env):
    """The hook's line, with the maintenance page up while it runs when it asks (and it was not up already)."""
    page = hook["maintenance"] and not vumi_freeze.maintenance(d.paths)
    if page:
        vumi_freeze.maintenance_on(d.cfg, d.paths, code, f"{d.cfg['environment']} is being upgraded.")
    try:
        return vumi_commands.run_shell(hook["run"], code, d.runas, env, timeout=hook["timeout"])
    finally:
        if page:
            vumi_freeze.maintenance_off(d.paths)


#: ``showmigrations --plan``'s answer: Django is slow to start, but not this slow
SHOWMIGRATIONS_TIMEOUT = 120


def applied(code, runas, env):
    """The Django migrations applied (``app.0002_name``), from ``manage.py showmigrations --plan``; None: not Django."""
    if not os.path.isfile(os.path.join(code, "manage.py")):
        return None
    res = vumi_commands.run_shell("python manage.py showmigrations --plan", code, runas, env,
                                  timeout=SHOWMIGRATIONS_TIMEOUT)  # fmt: skip
    if res["retcode"] != 0 or res["timed_out"]:
        return None
    return {line[4:].strip() for line in res["stdout"].splitlines() if line.startswith("[X] ")}


def guarded(hook, code, runas, env):
    """
    Whether a guard of the hook is met, as Salt's states have it: ``creates`` exists (in the
    release, through its shared folders), or ``unless`` exits 0 (run as the hook would be).
    """
    if hook["creates"] and os.path.lexists(os.path.join(code, hook["creates"])):
        return True
    if hook["unless"]:
        res = vumi_commands.run_shell(hook["unless"], code, runas, env, timeout=hook["timeout"])
        return res["retcode"] == 0 and not res["timed_out"]
    return False


def before_publish(d):
    run(d, "before_publish")


def after_publish(d):
    run(d, "after_publish")
