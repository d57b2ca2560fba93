#!/usr/bin/env python3
"""
Is a config-only change (a new ``env`` key) rolled as fast as a code-only roll of the same ports?

Deploys the bundled sample app into a temporary directory (its own git repo, base_dir,
Salt root and supervisord: nothing outside it is touched; the set-up of
``restart_downtime.py``), starts it on 2, then 4 loopback ports, and times, ``--runs``
times each (default 3), through ``salt.client.Caller`` (what ``salt-call --local`` uses):

- the code-only roll: ``vumi.restart_webapp_cluster`` (what a deploy's restart does: one
  port at a time, each answering before the next);
- the config-only roll: ``vumi.webapp_programs`` with one more ``env`` key each run (the
  program file changes; each port is replaced and answers before the next).

It prints the medians and their ratio (config / code; the goal is 1.2 or less).

    .venv/bin/python bench/config_roll.py [--runs 3] [--keep]
"""

import argparse
import pathlib
import statistics
import tempfile
import time

import restart_downtime as base  # the same temporary Salt root, repo and supervisord

ENV = base.ENV


def timed(caller, *args, **kwargs):
    """(seconds, result) of one call through the Caller."""
    began = time.monotonic()
    result = caller.cmd(*args, **kwargs)
    return time.monotonic() - began, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    top = pathlib.Path(tempfile.mkdtemp(prefix="vumi-bench-"))
    supervisor = base.Supervisord()
    try:
        supervisor.start()
        caller = base.caller_for(top, base.free_port(), supervisor)
        caller.cmd("vumi.deploy", ENV)
        serial = 0
        for size in (2, 4):
            ports = [base.free_port() for _ in range(size)]
            caller.cmd("vumi.start_webapp_cluster", ENV, *ports, ports=ports)
            code, config = [], []
            for _ in range(args.runs):
                took, ret = timed(caller, "vumi.restart_webapp_cluster", ENV, ports=ports)
                if not isinstance(ret, list) or len(ret) != size:
                    raise SystemExit(f"the code-only roll failed: {ret}")
                code.append(took)
                serial += 1
                env = {f"BENCH_{n}": str(n) for n in range(serial)}
                took, ret = timed(caller, "vumi.webapp_programs", ENV, ports=ports, env=env)
                if not isinstance(ret, dict) or len(ret["programs"]) != size:
                    raise SystemExit(f"the config-only roll failed: {ret}")
                config.append(took)
            code_s, config_s = statistics.median(code), statistics.median(config)
            print(
                f"{size} ports: config-only roll {config_s:.2f}s, code-only roll {code_s:.2f}s "
                f"(medians of {args.runs}): ratio {config_s / code_s:.2f} (goal <= 1.2)"
            )
            caller.cmd("vumi.stop_webapp_cluster", ENV, *ports, ports=ports)
    finally:
        supervisor.remove()
        base.remove_top(top, args.keep)


if __name__ == "__main__":
    main()
