"""
Processes beside the webapp (pillar ``processes``): celery workers and beat, RQ workers,
``./manage.py sendalerts``. Each type is a supervisord program of ``numprocs``
instances, written with the webapps' (``vumi_webapp.programs``), run as the deploy user
in ``current`` with the webapp's environment; supervisor brings a crashed one back.

A release that goes live (deploy, update, rollback) restarts them after the webapps:
each type's instances are stopped (its ``stop_signal``, then SIGKILL after its
``stop_timeout``) and started again, one type at a time, each RUNNING before the next.
"""

import time

from salt.exceptions import CommandExecutionError

import vumi_manifest
import vumi_supervisor
import vumi_webapp


def status(cfg, paths):
    """Per instance (``worker``, ``worker-1``...): supervisor's state, pid, uptime, the release it runs, whether current."""
    sup = vumi_supervisor.Supervisor(cfg)
    by_name = {f"{p['group']}:{p['name']}": p for p in sup.call("supervisor.getAllProcessInfo")}
    current_name = vumi_manifest.current_release_safe(paths)
    result = {}
    for process in cfg["processes"]:
        for full in vumi_supervisor.process_names(cfg, process):
            instance = full.split(":", 1)[1][len(vumi_supervisor.group_name(cfg)) + 1 :]
            result[instance] = dict(vumi_webapp.process_row(paths, by_name.get(full), current_name), process=process)
    return result


def _restart_type(cfg, paths, sup, process):
    group = vumi_supervisor.process_program(cfg, process)
    try:  # supervisor sends the type's stop_signal to each instance's group, SIGKILL after its stop_timeout
        sup.call("supervisor.stopProcessGroup", group, True)
        sup.call("supervisor.startProcessGroup", group, False)
    except vumi_supervisor.xmlrpc.client.Fault as fault:
        raise CommandExecutionError(f"supervisord could not restart process {process}: {fault.faultString}") from None
    deadline = time.monotonic() + cfg["start_timeout"]
    for full in vumi_supervisor.process_names(cfg, process):
        vumi_webapp.process_running(cfg, paths, sup, full, process, deadline)


def restart(cfg, paths, only_stale=False):
    """
    Restart every process type onto ``current`` (``only_stale``: those with an instance
    on another release, or not running), one type at a time; the types restarted.
    """
    if not cfg["processes"]:
        return []
    rows = status(cfg, paths)
    if any(r["state"] == "ABSENT" for r in rows.values()):
        # a type supervisord does not run yet: the program file first (the state and a port's
        # restart have written it already; a rollback or update with no ports has not)
        vumi_webapp.programs(cfg, paths)
        rows = status(cfg, paths)
    longest = max(p["stop_timeout"] for p in cfg["processes"].values())
    sup = vumi_supervisor.Supervisor(cfg, timeout=cfg["start_timeout"] + longest + 30)
    done = []
    for process in cfg["processes"]:
        if only_stale and all(r["running"] and r["current"] for r in rows.values() if r["process"] == process):
            continue
        _restart_type(cfg, paths, sup, process)
        done.append(process)
    return done
