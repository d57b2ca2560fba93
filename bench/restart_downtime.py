#!/usr/bin/env python3
"""
How long does ``vumi.restart_webapp`` leave the port refusing connections, and how
long is a port down after ``kill -9`` of its webapp?

Deploys the bundled sample app (Django on gunicorn) into a temporary directory (its
own git repo, base_dir, Salt root and supervisord; nothing outside it is touched),
starts the webapp on a free loopback port, then restarts it ``--runs`` times (default 10) through
``salt.client.Caller`` (what ``salt-call --local`` uses) while a probe thread
connects to the port every ``--interval`` ms (default 2). For each restart it
prints the longest stretch during which connections were refused, then the
median and the worst.

A stretch is measured from the first probe that was not accepted to the
next accepted one, so it is exact to within one probe interval plus one
connect. A probe is not accepted when the connection is refused, or when it
is not answered within ``--timeout`` ms (default 100; on loopback an accepted
connect takes microseconds): a server that stopped accepting with a full
backlog makes clients hang (their SYN is dropped) rather than be refused.

Then it kills the webapp's process (gunicorn's master) with SIGKILL ``--kills`` times
(default 5), each time once supervisor counts it RUNNING (up for ``startsecs``: a
process killed before that is a failed start, and supervisor gives up on a program
after ``start_retries`` of those, by design), and prints the seconds until the port
answers HTTP from a new process that supervisor started, with no Salt run: each, and
the median.

    .venv/bin/python bench/restart_downtime.py [--runs 10] [--kills 5] [--interval 2] [--timeout 100] [--keep]
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "sample"))
sys.path.insert(0, str(REPO / "tests"))

import salt.client  # noqa: E402
import salt.config  # noqa: E402

import make_repo  # noqa: E402  (the bundled sample app's repo builder)
from support.supervisor import Supervisord  # noqa: E402  (a supervisord of our own, as the tests start it)

ENV = "staging"


class Probe(threading.Thread):
    """Connects to the port every ``interval`` seconds and records stretches without service."""

    def __init__(self, port, interval, timeout):
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.timeout = timeout
        self.stop = threading.Event()
        self.longest = 0.0
        self.refused = 0
        self.hung = 0
        self.probes = 0

    def run(self):
        refused_since = None
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout):
                    pass
            except OSError as exc:
                if isinstance(exc, ConnectionRefusedError):
                    self.refused += 1
                else:
                    self.hung += 1
                if refused_since is None:
                    refused_since = now
            else:
                if refused_since is not None:
                    self.longest = max(self.longest, now - refused_since)
                    refused_since = None
            self.probes += 1
            time.sleep(self.interval)
        if refused_since is not None:  # still refusing at the end: count it too
            self.longest = max(self.longest, time.monotonic() - refused_since)


def remove_top(top, keep):
    """The temporary folder removed, or said to be kept (``--keep``)."""
    if keep:
        print(f"kept {top}")
    else:
        shutil.rmtree(top, ignore_errors=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answering_master(port):
    """The pid of the gunicorn master answering on ``port`` (its worker's parent), or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as resp:
            return json.loads(resp.read())["ppid"]
    except (OSError, ValueError, KeyError):
        return None


def caller_for(top, port, supervisor):
    """A masterless Caller whose Salt root, settings and pillar all live under ``top``."""
    upstream = make_repo.make_repo(top / "upstream")
    (top / "srv").mkdir()
    (top / "pillar").mkdir()
    (top / "states").mkdir()
    conf = top / "etc"
    conf.mkdir()
    minion = {
        "id": "vumi-bench",
        "file_client": "local",
        "root_dir": str(top / "salt"),
        "log_file": str(top / "salt" / "minion.log"),
        "file_roots": {"base": [str(top / "states")]},
        "pillar_roots": {"base": [str(top / "pillar")]},  # not the repo's: no /var/praekelt
        "vumi": {
            "base_dir": str(top / "srv"),
            "repo_url": str(upstream),
            "ports": [port],
            "supervisor": supervisor.settings(),
        },
    }
    (conf / "minion").write_text(json.dumps(minion, indent=2))  # JSON is YAML
    opts = salt.config.minion_config(str(conf / "minion"))
    caller = salt.client.Caller(mopts=opts)
    settings = caller.cmd("vumi.settings", ENV)
    if settings["base_dir"] != str(top / "srv"):
        raise SystemExit(f"refusing to run: base_dir resolved to {settings['base_dir']}")
    return caller


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0, help="ms between probes")
    parser.add_argument("--timeout", type=float, default=100.0, help="ms a probe waits to be accepted")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    top = pathlib.Path(tempfile.mkdtemp(prefix="vumi-bench-"))
    caller = None
    port = free_port()
    supervisor = Supervisord()
    try:
        supervisor.start()
        caller = caller_for(top, port, supervisor)
        started = time.monotonic()
        deployed = caller.cmd("vumi.deploy", ENV)
        print(
            f"deployed {deployed['release']} ({deployed['revision'][:10]}) "
            f"in {time.monotonic() - started:.1f}s into {top}"
        )
        ret = caller.cmd("vumi.start_webapp", ENV, port)
        print(f"webapp pid {ret['pid']} on 127.0.0.1:{port}")

        downtimes = []
        for run in range(1, args.runs + 1):
            probe = Probe(port, args.interval / 1000, args.timeout / 1000)
            probe.start()
            time.sleep(0.05)  # a few accepted probes first
            t0 = time.monotonic()
            ret = caller.cmd("vumi.restart_webapp", ENV, port)
            took = time.monotonic() - t0
            if not isinstance(ret, dict) or not ret.get("started"):
                raise SystemExit(f"restart {run} failed: {ret}")
            time.sleep(0.05)  # and a few after
            probe.stop.set()
            probe.join()
            ms = probe.longest * 1000
            downtimes.append(ms)
            hung = f", {probe.hung} unanswered" if probe.hung else ""
            print(
                f"run {run:2d}: refused for {ms:7.1f} ms (restart call {took * 1000:6.1f} ms, "
                f"{probe.refused}/{probe.probes} probes refused{hung}, "
                f"pid {ret['old_pid']} -> {ret['pid']})"
            )
        print(
            f"median {statistics.median(downtimes):.1f} ms, worst {max(downtimes):.1f} ms, "
            f"best {min(downtimes):.1f} ms over {len(downtimes)} restarts "
            f"(probe every {args.interval:g} ms, unanswered after {args.timeout:g} ms counts as refused)"
        )

        backs = []
        for run in range(1, args.kills + 1):
            deadline = time.monotonic() + 60
            while True:  # a crash of a webapp that was up: RUNNING in supervisor (past startsecs), answering
                row = caller.cmd("vumi.webapp_status", ENV, port)[port]
                pid = row["pid"]
                if pid is not None and row["state"] == "RUNNING" and answering_master(port) == pid:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"kill {run}: the webapp on port {port} is not answering")
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()
            while True:  # answered by the new process supervisor started (not by an orphaned worker)
                now = answering_master(port)
                if now not in (None, pid, 1) and now == caller.cmd("vumi.webapp_status", ENV, port)[port]["pid"]:
                    break
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"kill {run}: the port did not come back within 60 s")
                time.sleep(0.02)
            backs.append(time.monotonic() - t0)
            print(f"kill {run}: pid {pid} killed, port answering again from pid {now} after {backs[-1]:.2f} s")
        if backs:
            print(
                f"kill -9 to answering again: median {statistics.median(backs):.2f} s over {len(backs)} kills, "
                f"worst {max(backs):.2f} s (supervisor restarts it; no Salt run)"
            )
    finally:
        if caller is not None:
            try:
                caller.cmd("vumi.stop_webapp", ENV, port)
            except Exception as exc:  # pylint: disable=broad-except
                print(f"could not stop the webapp on port {port}: {exc}", file=sys.stderr)
        supervisor.remove()
        remove_top(top, args.keep)


if __name__ == "__main__":
    main()
