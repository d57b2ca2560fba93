#!/usr/bin/env python3
"""
How long does ``vumi.restart_webapp`` leave the port refusing connections?

Deploys the bundled sample app into a temporary directory (its own git repo,
base_dir and Salt root; nothing outside it is touched), starts the webapp on a
free loopback port, then restarts it ``--runs`` times (default 10) through
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

    .venv/bin/python bench/restart_downtime.py [--runs 10] [--interval 2] [--timeout 100] [--keep]
"""

import argparse
import json
import pathlib
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "sample"))

import make_repo  # noqa: E402  (the bundled sample app's repo builder)
import salt.client  # noqa: E402
import salt.config  # noqa: E402

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


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def caller_for(top):
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
        "module_dirs": [str(REPO / "salt" / "_modules")],
        "vumi": {"base_dir": str(top / "srv"), "repo_url": str(upstream), "ports": []},
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
    parser.add_argument("--interval", type=float, default=2.0, help="ms between probes")
    parser.add_argument("--timeout", type=float, default=100.0, help="ms a probe waits to be accepted")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    top = pathlib.Path(tempfile.mkdtemp(prefix="vumi-bench-"))
    caller = None
    port = free_port()
    try:
        caller = caller_for(top)
        started = time.monotonic()
        deployed = caller.cmd("vumi.deploy", ENV)
        print(f"deployed {deployed['release']} ({deployed['revision'][:10]}) "
              f"in {time.monotonic() - started:.1f}s into {top}")
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
            print(f"run {run:2d}: refused for {ms:7.1f} ms (restart call {took * 1000:6.1f} ms, "
                  f"{probe.refused}/{probe.probes} probes refused{hung}, "
                  f"pid {ret['old_pid']} -> {ret['pid']})")
        print(f"median {statistics.median(downtimes):.1f} ms, worst {max(downtimes):.1f} ms, "
              f"best {min(downtimes):.1f} ms over {len(downtimes)} restarts "
              f"(probe every {args.interval:g} ms, unanswered after {args.timeout:g} ms counts as refused)")
    finally:
        if caller is not None:
            try:
                caller.cmd("vumi.stop_webapp", ENV, port)
            except Exception as exc:  # pylint: disable=broad-except
                print(f"could not stop the webapp on port {port}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
