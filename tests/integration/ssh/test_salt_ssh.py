"""
Agentless: the README's commands through ``salt-ssh`` and a roster, no
minion on the web host::

    salt-run saltutil.sync_all          # once, on the controlling host: the vumi wrapper
    salt-ssh 'web*' state.apply vumi pillar='{"branch": "staging"}'
    salt-ssh 'web*' vumi.restart_webapp staging 8001
    salt-ssh 'web*' vumi.execute production "./manage.py syncdb"

The "web host" is this machine, reached through a real ``sshd`` from Debian's
openssh-server that the test starts on a free loopback port, with throw-away host
and user keys and a config of its own (nothing system-wide but ``/run/sshd``,
which sshd insists on). The controlling host's config (master config, roster,
pillar, caches) lives in a temp dir, made fresh by this module: custom modules,
states and the wrapper reach the host the documented way. ``pytest -s`` prints
salt-ssh's output of the three commands.

The tests are steps of one story and run in file order.
"""

import contextlib
import json
import os
import threading
import time

import pytest
import salt.config
import salt.output
from saltfactories.utils import random_string

from support import host as host_guard
from support import ssh
from support.fleet import REPO, free_ports, kill_leftover_webapps, make_host
from support.helpers import answer

pytestmark = pytest.mark.slow

TARGET = "web*"
GREETING = "hello over ssh"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not ssh.SSHD.is_file():
        pytest.skip("needs Debian's openssh-server (.ci/run installs it)")
    with ssh.running_sshd(tmp_path_factory.mktemp("sshd")) as sshd:
        yield sshd


# --------------------------------------------------------------------------
# The controlling host: master config, roster, pillar, all fresh in tmp
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(tmp_path_factory, sshd):
    ports = free_ports(3, {sshd["port"]})
    host_id = random_string("web-ssh-", uppercase=False)
    return make_host(tmp_path_factory.mktemp(host_id), host_id, {"staging": ports[:2], "production": ports[2:]})


def _pillar(root, host):
    """The bundle's pillar (linked) and an override for this host: its tmp paths, ports and settings."""
    root.mkdir()
    (root / "vumi").symlink_to(REPO / "pillar" / "vumi", target_is_directory=True)
    override = host.pillar()
    override["vumi"]["environments"]["staging"]["settings"] = {"GREETING": GREETING}
    override["vumi"]["settings_extends"] = "environments.default"
    (root / "web_host.sls").write_text(json.dumps(override, indent=2) + "\n")  # JSON is YAML
    (root / "top.sls").write_text(
        "base:\n  '*':\n    - vumi.defaults\n    - vumi.staging\n    - vumi.production\n"
        f"  {json.dumps(host.id)}:\n    - web_host\n"
    )
    return root


@pytest.fixture(scope="module")
def controller(tmp_path_factory, sshd, host):
    root = tmp_path_factory.mktemp("salt-ssh")
    ctl = ssh.write_controller(root, sshd, [host.id], _pillar(root / "pillar", host))
    opts = salt.config.master_config(str(ctl["conf"] / "master"))
    ctl.update(opts=dict(opts, color=False), host=host)
    try:
        yield ctl
    finally:
        for env in ("staging", "production"):
            salt_ssh(ctl, f"vumi.stop_webapp_cluster {env}")
        leftovers = kill_leftover_webapps([host])
        assert not leftovers, f"vumi.stop_webapp_cluster over salt-ssh left webapps running: {leftovers}"


def salt_ssh(ctl, command_line, timeout=300):
    """salt-ssh at ``web*``: (exit code, this host's return, process)."""
    code, data, proc, elapsed = ssh.salt_ssh(ctl, TARGET, command_line, timeout)
    print(f"[{elapsed:5.1f}s] salt-ssh {command_line}")
    try:
        return code, data[ctl["host"].id], proc
    except (KeyError, TypeError):
        return code, None, proc


def show(ctl, command_line, data, outputter):
    """Print what salt-ssh prints for this return (its outputter, no colours)."""
    text = salt.output.out_format({ctl["host"].id: data}, outputter, ctl["opts"])
    print(f"\n$ salt-ssh '{TARGET}' {command_line}\n{text}")


@pytest.fixture(scope="module")
def synced(controller):
    """``salt-run saltutil.sync_all`` with the same config: puts the vumi wrapper where salt-ssh loads it."""
    synced = ssh.sync_all(controller)
    assert "wrapper.vumi" in synced["wrapper"] and "modules.vumi" in synced["modules"], synced
    # the helpers travel too: the module imports them from the utils folder beside its own
    assert "utils.vumi_pipeline" in synced["utils"], synced
    return controller


def apply(ctl, env):
    line = f"""state.apply vumi pillar='{{"branch": "{env}"}}'"""
    code, data, proc = salt_ssh(ctl, line)
    assert isinstance(data, dict) and data, (code, proc.stdout[-3000:], proc.stderr[-3000:])
    show(ctl, line, data, "highstate")
    failed = {k: v["comment"] for k, v in data.items() if v["result"] is not True}
    assert code == 0 and not failed, failed
    return data


def serving(port, env):
    return answer(port, env)


# --------------------------------------------------------------------------
# The story
# --------------------------------------------------------------------------


def test_state_apply_staging_over_ssh(synced, host):
    before = host_guard.state(trees=["/var/praekelt"], files=[])
    started = time.monotonic()
    data = apply(synced, "staging")
    print(f"(state.apply staging over salt-ssh: {time.monotonic() - started:.1f}s)")
    (deployed,) = [v for k, v in data.items() if k.startswith("vumi_|-vumi-staging-deployed")]
    release = deployed["changes"]["release"]["new"]
    assert host.releases("staging") == [release]
    assert deployed["changes"]["revision"]["new"] == host.revision("staging")
    for port in host.ports["staging"]:
        body = serving(port, "staging")
        # pillar's settings reached the host (shipped with the state run) and the webapp
        assert (body["release"], body["greeting"]) == (release, GREETING), body
    settings_file = host.env_root("staging") / "current" / "vumi" / "environments" / "staging.py"
    assert oct(settings_file.stat().st_mode & 0o777) == "0o640"
    written = host_guard.changes(before, host_guard.state(trees=["/var/praekelt"], files=[]))
    assert not written, f"the host's pillar did not reach the deploy: {written[:5]}"

    # the settings functions see the same pillar through the wrapper: nothing to do again
    code, data, proc = salt_ssh(synced, "vumi.current staging")
    assert code == 0 and data["release"] == release and data["settings_changed"] is False, proc.stdout


def test_restart_webapp_over_ssh(synced, host):
    port, other = host.ports["staging"][1], host.ports["staging"][0]
    before, other_before = serving(port, "staging"), serving(other, "staging")
    line = f"vumi.restart_webapp staging {port}"
    code, data, proc = salt_ssh(synced, line)
    assert code == 0 and isinstance(data, dict), (proc.stdout, proc.stderr)
    show(synced, line, data, "nested")
    assert data["old_pid"] == before["ppid"] and data["pid"] != before["ppid"], data
    after = serving(port, "staging")
    assert after["ppid"] == data["pid"] and after["release"] == before["release"], after
    assert serving(other, "staging")["ppid"] == other_before["ppid"]  # its port only


def test_execute_production_over_ssh(synced, host):
    apply(synced, "production")
    (port,) = host.ports["production"]
    body = serving(port, "production")
    assert body["greeting"] == "hello from production"  # no settings in pillar: the repo's own file

    line = 'vumi.execute production "./manage.py syncdb"'
    code, data, proc = salt_ssh(synced, line)
    assert code == 0 and isinstance(data, dict), (proc.stdout, proc.stderr)
    show(synced, line, data, "nested")
    assert data["retcode"] == 0 and "Applying pages.0001_initial... OK" in data["stdout"], data
    assert data["release"] == body["release"]
    assert (host.env_root("production") / "shared" / "tmp" / "sample.sqlite").is_file()
    assert serving(port, "production")["ppid"] == body["ppid"]

    # a failing command fails the salt-ssh job
    code, data, proc = salt_ssh(synced, 'vumi.execute production "./manage.py fail"')
    assert code != 0, proc.stdout
    assert data["retcode"] == 3 and "failing on purpose" in data["stderr"], data


class CommandLines(threading.Thread):
    """
    Samples every process's command line on this machine (the web host, and the controlling
    host's ssh client too) until stopped: those holding ``needle``.
    """

    def __init__(self, needle):
        super().__init__(daemon=True)
        self.needle, self.seen, self.samples, self.stop = needle.encode(), set(), 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples += 1
            for name in os.listdir("/proc"):
                if name.isdigit():
                    with contextlib.suppress(OSError):
                        with open(f"/proc/{name}/cmdline", "rb") as fh:
                            line = fh.read()
                        if self.needle in line and int(name) != os.getpid():
                            self.seen.add(line.replace(b"\0", b" ")[:200])
            time.sleep(0.005)


def remote_command_lines(ctl, command_line, needle):
    watcher = CommandLines(needle)
    watcher.start()
    try:
        code, data, proc = salt_ssh(ctl, command_line)
    finally:
        watcher.stop.set()
        watcher.join()
    assert code == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    return watcher


def test_pillar_settings_reach_the_hosts_process_list_only_for_the_functions_that_use_them(synced):
    # the wrapper hands the host's pillar to every function as an argument (part of the remote
    # salt-call's command line); pillar's settings mappings only to deploy, prepare, current, settings
    for line in ("vumi.releases staging", "vumi.webapp_status staging", "vumi.check staging"):
        watcher = remote_command_lines(synced, line, GREETING)
        assert watcher.samples > 10 and not watcher.seen, (line, watcher.seen)
    # the same sampling sees them where the README says they go (so it would have seen them above)
    watcher = remote_command_lines(synced, "vumi.settings staging", GREETING)
    assert watcher.seen, "the remote salt-call's command line was never sampled"
