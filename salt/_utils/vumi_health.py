"""
Stage ``health``: one webapp of the new release on a spare port must answer before the switch.
"""

import contextlib
import http.client
import logging
import os
import socket
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_errors
import vumi_files
import vumi_probes
import vumi_webapp

log = logging.getLogger(__name__)


def health(d):
    """
    Before the release may become current: one webapp of it, on a spare port,
    must answer (the running webapps and ``current`` are not touched).
    """
    if d.cfg["health_check"]:
        d.health = health_check(d.cfg, d.paths, d.release)


def spare_port(host):
    """A port nobody listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def health_check(cfg, paths, name):
    """
    Start one webapp of release ``name`` on a spare port (not through
    ``current``: its own code folder and virtualenv; a child of this job, not
    supervisor's), ask it (``probe``), stop it. Return the evidence; raise with it on failure.
    """
    port = spare_port(cfg["host"])
    logfile = os.path.join(paths.logs, f"webapp.health.{port}.log")
    try:
        proc = vumi_webapp.spawn(cfg, paths, name, port, logfile)
    except (CommandExecutionError, SaltInvocationError) as exc:
        raise vumi_errors.HealthFailed(f"the webapp of release {name} did not start: {exc}",
                                       stage="health", release=name, evidence=str(exc), log=None) from None  # fmt: skip
    try:
        opened = _wait_open(cfg, port, proc)
        healthy, evidence = probe(cfg, port, proc) if opened is None else (False, opened)
        if opened is not None and proc.poll() is not None:
            raise vumi_errors.HealthFailed(f"the webapp of release {name} did not start: {opened}; last lines of "
                                           f"{logfile}:\n{vumi_files.file_tail(logfile)}",
                                           stage="health", release=name, evidence=opened, log=logfile)  # fmt: skip
    finally:
        vumi_webapp.stop_child(proc, cfg["stop_timeout"], cfg["stop_signal"])
    if not healthy:
        raise vumi_errors.HealthFailed(
            f"health check of release {name} failed: {evidence}; last lines of {logfile}:\n{vumi_files.file_tail(logfile)}",
            stage="health",
            release=name,
            evidence=evidence,
            log=logfile,
        )
    with contextlib.suppress(FileNotFoundError):
        os.remove(logfile)  # kept only when it failed, as evidence
    return {"port": port, "path": cfg["health_path"] or "/", "evidence": evidence}


def _wait_open(cfg, port, proc):
    """None once the port accepts connections; else what happened: it exited, or ``start_timeout`` passed."""
    deadline = time.monotonic() + cfg["start_timeout"]
    while True:
        if proc.poll() is not None:
            return f"exited with code {proc.returncode}"
        if vumi_probes.port_open(cfg["host"], port):
            return None
        if time.monotonic() >= deadline:
            return f"did not open the port within {cfg['start_timeout']:g}s"
        time.sleep(0.05)


def probe(cfg, port, proc):
    """
    (healthy, evidence): with ``health_path``, GET it answers 2xx or 3xx; without,
    GET / answers below 500 (up and serving: a 404 from an app without that page
    counts). Asks again until ``health_timeout``, and gives up at once when the
    process ``proc`` has exited.
    """
    host, path = cfg["host"], cfg["health_path"] or "/"
    passes = (lambda status: 200 <= status < 400) if cfg["health_path"] else (lambda status: status < 500)
    deadline = time.monotonic() + cfg["health_timeout"]
    while True:
        if proc.poll() is not None:
            return False, f"the webapp exited with code {proc.returncode} before GET {path} on port {port} answered"
        conn = http.client.HTTPConnection(host, port, timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        try:
            conn.request("GET", path, headers={"User-Agent": "vumi-salt health check"})
            resp = conn.getresponse()
            body = resp.read(300).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException) as exc:
            # not answering yet (gunicorn listens before the app is loaded): ask again until the deadline
            if time.monotonic() + 0.1 >= deadline:
                return False, f"GET {path} on port {port} got no answer within {cfg['health_timeout']:g}s: {exc}"
            time.sleep(0.1)
            continue
        finally:
            conn.close()
        evidence = f"GET {path} on port {port} answered HTTP {resp.status} {resp.reason}"
        if passes(resp.status):
            return True, evidence
        return False, f"{evidence}: {body!r}" if body else evidence
