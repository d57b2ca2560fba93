#!/usr/bin/env python3
"""
Fleet timings: a real salt-master and four minions; for 1, 2 and 4 targeted
minions, the median of an orchestrated code-only deploy and of a no-op ``state.apply vumi``
through the master, and the ratios 4/1. The work is in bench/fleet_bench.py, run by pytest (it needs
salt-factories' fixtures, which bench/conftest.py sets up); this runs it.

    .venv/bin/python bench/fleet_speed.py [--runs 3]
"""

import argparse
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ["VUMI_BENCH_RUNS"] = str(args.runs)
    os.chdir(REPO)
    sys.exit(pytest.main([str(REPO / "bench" / "fleet_bench.py"), "-q", "-s", "-p", "no:cacheprovider"]))
