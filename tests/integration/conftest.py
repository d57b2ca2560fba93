"""
Fixtures of the integration tests: a real salt-master with two minions (``web-a-*``,
``web-b-*``) from pytest-salt-factories, and masterless ``salt-call --local`` runs.

Several "hosts" share this one machine, so each gets its own ``base_dir``, its own
sample repository and its own free loopback ports, through a per-minion pillar file
laid over the bundle's own pillar (``pillar/vumi``, linked, never copied, so the
tests use the files users get).
"""

import contextlib

import pytest
import salt._logging.impl

from support.fleet import ENVS, kill_leftover_webapps, make_hosts, started_master


@pytest.fixture(scope="session", autouse=True)
def _no_deferred_salt_log_handler():
    """
    Salt's temporary root handler queues every record (salt-factories' log server
    re-logs the daemons' records here) and dumps them all at exit, onto pytest's
    closed stderr: "--- Logging error --- I/O operation on closed file" by the
    dozen. Hand what it holds to pytest's handlers and remove it.
    """
    salt._logging.impl.shutdown_temp_handler()


@pytest.fixture(scope="module")
def salt_master(salt_factories, tmp_path_factory):
    """A real salt-master serving this repo's ``salt/`` and a pillar tree made per test module."""
    with started_master(salt_factories, tmp_path_factory.mktemp("fleet-pillar"), "vumi-master-") as master:
        yield master


@pytest.fixture(scope="module")
def fleet_hosts(salt_master, tmp_path_factory):
    """Two hosts, each with its own base_dir, repository and ports (after the master's)."""
    layouts = [("web-a-", {"staging": 2, "production": 1}), ("web-b-", {"staging": 2, "production": 2})]
    return make_hosts(salt_master, tmp_path_factory, layouts)


@pytest.fixture(scope="module")
def fleet(salt_master, fleet_hosts):
    """
    The two minions running and connected (the master accepts their keys as
    salt-factories does: on their auth event). At teardown every webapp is
    stopped through the master before the daemons stop.
    """
    with contextlib.ExitStack() as stack:
        for host in fleet_hosts:
            minion = salt_master.salt_minion_daemon(host.id)
            stack.enter_context(minion.started())
        try:
            yield {host.id: host for host in fleet_hosts}
        finally:
            salt = salt_master.salt_cli(timeout=60)
            for env in ENVS:
                salt.run("vumi.stop_webapp_cluster", env, minion_tgt="web*")
            leftovers = kill_leftover_webapps(fleet_hosts)
            assert not leftovers, f"vumi.stop_webapp_cluster left webapps running: {leftovers}"
