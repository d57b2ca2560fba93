"""
Masterless: the README's commands typed as they are, through the shell,
with ``salt-call --local -c <config dir>`` (the .venv's salt-call; a minion config
in a temp dir as ``scripts/demo`` writes it)::

    salt-call --local state.apply vumi pillar='{"branch": "staging"}'
    salt-call --local vumi.restart_webapp staging 8001
    salt-call --local vumi.execute production "./manage.py syncdb"

(8001 is the README's example; here the host's own free ports stand in for it.)
"""

import json
import shlex
import subprocess

import pytest
from saltfactories.utils import random_string

from support.fleet import ENVS, SALT_CALL, free_ports, kill_leftover_webapps, make_host, write_pillar
from support.helpers import answer
from support.salt_config import masterless_minion

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    ports = free_ports(3)
    return make_host(
        tmp_path_factory.mktemp("masterless-host"),
        random_string("masterless-", uppercase=False),
        {"staging": ports[:2], "production": ports[2:]},
    )


@pytest.fixture(scope="module")
def config_dir(host, tmp_path_factory):
    """A minion config like scripts/demo's: this checkout's states, modules and pillar."""
    root = tmp_path_factory.mktemp("masterless-salt")
    pillar_dir = write_pillar(root / "pillar", [host])
    conf = root / "conf"
    conf.mkdir()
    config = masterless_minion(root / "root", pillar_dir, minion_id=host.id)
    (conf / "minion").write_text(json.dumps(config, indent=2) + "\n")
    return conf


def salt_call(config_dir, command_line):
    """
    ``salt-call --local -c <config dir> <command_line>`` run by the shell, so the
    quoting is the user's own; returns (exit code, the ``local`` return, the process).
    """
    line = " ".join(
        [shlex.quote(str(SALT_CALL)), "--local", "-c", shlex.quote(str(config_dir)), "--out=json", command_line]
    )
    proc = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=300, check=False, cwd=config_dir)
    try:
        data = json.loads(proc.stdout)["local"]
    except (ValueError, KeyError, TypeError):
        data = None
    return proc.returncode, data, proc


@pytest.fixture(scope="module")
def deployed(host, config_dir):
    """Everything the tests below start is stopped at the end, through salt-call too."""
    yield host
    for env in ENVS:
        salt_call(config_dir, f"vumi.stop_webapp_cluster {env}")
    assert not kill_leftover_webapps([host]), "vumi.stop_webapp_cluster left webapps running"


def apply(config_dir, env):
    return salt_call(config_dir, f"""state.apply vumi pillar='{{"branch": "{env}"}}'""")


@pytest.fixture(scope="module")
def staging_applied(deployed, config_dir):
    return apply(config_dir, "staging")


@pytest.fixture(scope="module")
def production_applied(staging_applied, config_dir):
    return apply(config_dir, "production")


def assert_applied(applied):
    code, states, proc = applied
    assert code == 0 and isinstance(states, dict) and states, proc
    failed = {k: v["comment"] for k, v in states.items() if v["result"] is not True}
    assert not failed, failed
    return states


def serving(host, env):
    pids = {}
    for port in host.ports[env]:
        body = answer(port, env)
        assert body["revision"] == host.revision(env), (port, body)
        pids[port] = body["ppid"]
    return pids


def test_apply_staging(staging_applied, host):
    states = assert_applied(staging_applied)
    assert any(v["changes"] for v in states.values())
    assert len(host.releases("staging")) == 1
    serving(host, "staging")


def test_restart_webapp(staging_applied, host, config_dir):
    first, second = host.ports["staging"]
    before = serving(host, "staging")
    code, ret, proc = salt_call(config_dir, f"vumi.restart_webapp staging {second}")
    assert code == 0, proc
    assert ret["old_pid"] == before[second] != ret["pid"]
    after = serving(host, "staging")
    assert after == {first: before[first], second: ret["pid"]}


def test_second_apply_changes_nothing(staging_applied, host, config_dir):
    releases, pids = host.releases("staging"), serving(host, "staging")
    states = assert_applied(apply(config_dir, "staging"))
    changed = {k: v["changes"] for k, v in states.items() if v["changes"]}
    assert not changed, changed
    assert host.releases("staging") == releases
    assert serving(host, "staging") == pids


def test_execute_syncdb_after_production_apply(production_applied, host, config_dir):
    assert_applied(production_applied)
    serving(host, "production")
    code, ret, proc = salt_call(config_dir, 'vumi.execute production "./manage.py syncdb"')
    assert code == 0, proc
    assert ret["retcode"] == 0 and "Synced" in ret["stdout"], ret


def test_execute_failure_exits_non_zero(production_applied, host, config_dir):
    code, ret, proc = salt_call(config_dir, 'vumi.execute production "./manage.py fail"')
    assert code != 0, proc
    assert ret["retcode"] == 3, ret
