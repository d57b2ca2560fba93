"""
The fleet benchmark, not part of the suite: ``.venv/bin/python bench/fleet_speed.py``.

A real salt-master and four minions (each its own base_dir, supervisord and two
staging ports, one upstream repository). For 1, 2 and 4 targeted minions it times,
``--runs`` times each (default 3), an orchestrated code-only deploy
(``salt-run state.orchestrate vumi.orch.deploy``, one new commit each time) and a
no-op ``salt -L ... state.apply vumi`` through the master, and prints the medians
and the ratios 4/1.
"""

import contextlib
import os
import statistics
import time

import pytest

import make_repo as sample
from support.fleet import kill_leftover_webapps, make_hosts, started_master

ENV = "staging"
RUNS = int(os.environ.get("VUMI_BENCH_RUNS", "3"))


@pytest.fixture(scope="module")
def bench_fleet(salt_factories, tmp_path_factory):
    upstream = sample.make_repo(tmp_path_factory.mktemp("bench-upstream") / "sampleapp")
    with started_master(salt_factories, tmp_path_factory.mktemp("bench-pillar"), "vumi-bench-master-") as master:
        layouts = [(f"web-{i}-", {ENV: 2}) for i in range(1, 5)]
        hosts = sorted(make_hosts(master, tmp_path_factory, layouts, upstream), key=lambda h: h.id)
        salt_cli, salt_run = master.salt_cli(timeout=300), master.salt_run_cli(timeout=600)
        with contextlib.ExitStack() as stack:
            for host in hosts:
                stack.enter_context(master.salt_minion_daemon(host.id).started())
            try:
                assert salt_cli.run("saltutil.sync_all", minion_tgt="web*").returncode == 0
                assert salt_run.run("saltutil.sync_all").returncode == 0
                ret = salt_cli.run("state.apply", "vumi", pillar={"branch": ENV}, minion_tgt="web*")
                assert ret.returncode == 0, ret
                yield hosts, upstream, salt_cli, salt_run
            finally:
                salt_cli.run("vumi.stop_webapp_cluster", ENV, minion_tgt="web*")
                kill_leftover_webapps(hosts)


def timed(fn):
    started = time.monotonic()
    ret = fn()
    assert ret.returncode == 0, ret
    return time.monotonic() - started


def test_fleet_speed(bench_fleet):
    hosts, upstream, salt_cli, salt_run = bench_fleet
    rows = {}
    for n in (1, 2, 4):
        targets = ",".join(h.id for h in hosts[:n])
        deploys, noops = [], []
        for k in range(RUNS):
            sample.commit_file(upstream, ENV, "CHANGES", f"bench {n} {k}\n", f"Bench {n} {k}")
            deploys.append(timed(lambda targets=targets: salt_run.run(
                "state.orchestrate", "vumi.orch.deploy",
                pillar={"branch": ENV, "target": targets, "tgt_type": "list"})))  # fmt: skip
            noops.append(timed(lambda targets=targets: salt_cli.run("-L", "state.apply", "vumi", pillar={"branch": ENV},
                                                    minion_tgt=targets)))  # fmt: skip
        rows[n] = (statistics.median(deploys), statistics.median(noops))
        print(f"\n{n} minion(s): orchestrated code-only deploy median {rows[n][0]:.2f} s "
              f"({', '.join(f'{t:.2f}' for t in deploys)}); no-op state.apply median {rows[n][1]:.2f} s "
              f"({', '.join(f'{t:.2f}' for t in noops)})")  # fmt: skip
    print(
        f"\nratio 4/1: orchestrated deploy {rows[4][0] / rows[1][0]:.2f}, no-op state.apply {rows[4][1] / rows[1][1]:.2f}"
    )
