"""
What bench/fleet_bench.py needs of the test suite's set-up: the sample's repository builder
and tests/support on the path, and salt-factories' daemons on loopback under a temp dir.
"""

import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "sample"), str(REPO / "tests")]


@pytest.fixture(scope="session")
def salt_factories_config(tmp_path_factory):
    return {"root_dir": str(tmp_path_factory.mktemp("salt-root")), "log_server_host": "127.0.0.1"}
