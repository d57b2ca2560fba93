"""
A Salt event per deploy stage (``vumi/deploy/<env>/<stage>``): live progress on the
master's bus (or the minion's, masterless), relayed by root from the deploy user's process.
"""

import logging
import os
import time

log = logging.getLogger(__name__)


def event_bus_up(opts):
    """
    Whether an event would reach anyone: under a master, yes; masterless only
    when a minion daemon's event bus runs (otherwise each event waits a second
    for a socket that is not there).
    """
    local = opts.get("local") or opts.get("file_client") == "local"
    if not local or opts.get("use_master_when_local") or opts.get("ipc_mode") == "tcp":
        return True
    sock_dir = opts.get("sock_dir") or ""
    return os.path.isdir(sock_dir) and any(
        n.startswith("minion_event_") and n.endswith("_pull.ipc") for n in os.listdir(sock_dir)
    )


#: in a process of the deploy user's (vumi_privileges.as_user): where events go instead of the bus,
#: which is root's; the parent fires them
RELAY = None


def event(d, stage, started, outcome, **extra):
    """Live progress: ``salt-run state.event`` (or the minion's bus, masterless) shows each stage."""
    if RELAY is not None:
        d.events = d.cfg["events"]
    elif d.events is None:
        d.events = d.cfg["events"] and event_bus_up(d.opts)
    if not d.events:
        return
    data = {"env": d.cfg["environment"], "stage": stage, "release": d.release, "revision": d.sha,
            "elapsed": round(time.monotonic() - started, 3), "outcome": outcome, **extra}  # fmt: skip
    if RELAY is not None:
        RELAY({"event": f"vumi/deploy/{d.cfg['environment']}/{stage}", "data": data})
        return
    try:
        d.salt["event.send"](f"vumi/deploy/{d.cfg['environment']}/{stage}", data)
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("could not fire the %s event: %s", stage, exc)  # progress is best effort
