"""
Issue #9, agentless: the README's commands through ``salt-ssh`` and a roster, no
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
import getpass
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import time

import pytest
import salt.config
import salt.output
from fleet_support import REPO, free_ports, kill_leftover_webapps, make_host
from helpers import http_get
from saltfactories.utils import random_string

pytestmark = pytest.mark.slow

SSHD = pathlib.Path("/usr/sbin/sshd")
BIN = REPO / ".venv" / "bin"
TARGET = "web*"
GREETING = "hello over ssh"


# --------------------------------------------------------------------------
# The web host: a real sshd on a loopback port
# --------------------------------------------------------------------------


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)


def _wait_port(port, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {timeout}s")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not SSHD.is_file():
        pytest.skip("needs Debian's openssh-server (.ci/run installs it)")
    root = tmp_path_factory.mktemp("sshd")
    _keygen(root / "hostkey")
    _keygen(root / "userkey")
    (root / "authorized_keys").write_text((root / "userkey.pub").read_text())
    (port,) = free_ports(1)
    config = root / "sshd_config"
    config.write_text(
        "\n".join([
            "ListenAddress 127.0.0.1",
            f"Port {port}",
            f"HostKey {root / 'hostkey'}",
            f"PidFile {root / 'sshd.pid'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}",
            "StrictModes no",  # pytest's temp dirs are not laid out as sshd wants ~/.ssh
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # scp (which salt-ssh sends the thin with) speaks SFTP since OpenSSH 9
            "Subsystem sftp internal-sftp",
        ]) + "\n"
    )  # fmt: skip
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation dir
    subprocess.run([str(SSHD), "-t", "-f", str(config)], check=True)
    with open(root / "sshd.log", "wb") as log:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc)
        host_key = (root / "hostkey.pub").read_text().split()[:2]
        (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
        yield {"port": port, "key": root / "userkey", "known_hosts": root / "known_hosts", "root": root}
    finally:
        proc.terminate()
        proc.wait(10)


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
    state = root / "var"
    # the interpreter this test runs on, not a pyenv shim: salt-ssh's shim cannot exec
    # those, and the thin's compiled parts are built for this Python
    python_dir = os.path.dirname(os.path.realpath(sys._base_executable))  # pylint: disable=protected-access
    roster = root / "roster"
    roster.write_text(
        json.dumps({
            host.id: {
                "host": "127.0.0.1",
                "port": sshd["port"],
                "user": getpass.getuser(),
                "priv": str(sshd["key"]),
                "thin_dir": str(root / "thin"),
                "set_path": f"{python_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            }
        }, indent=2) + "\n"
    )  # fmt: skip
    conf = root / "conf"
    conf.mkdir()
    master = {
        "root_dir": str(state),
        "cachedir": str(state / "cache"),
        "extension_modules": str(state / "extmods"),
        "pki_dir": str(state / "pki"),
        "sock_dir": str(state / "sock"),
        "log_file": str(state / "master.log"),
        "ssh_log_file": str(state / "ssh.log"),
        # the throw-away host key is known: host keys are checked, none is written to ~/.ssh
        "known_hosts_file": str(sshd["known_hosts"]),
        "file_roots": {"base": [str(REPO / "salt")]},
        "pillar_roots": {"base": [str(_pillar(root / "pillar", host))]},
    }
    (conf / "master").write_text(json.dumps(master, indent=2) + "\n")
    # what installing salt-master would have made: salt-run writes its job there
    (state / "cache" / "proc").mkdir(parents=True)
    opts = salt.config.master_config(str(conf / "master"))
    ctl = {"conf": conf, "roster": roster, "opts": dict(opts, color=False), "host": host}
    try:
        yield ctl
    finally:
        for env in ("staging", "production"):
            salt_ssh(ctl, f"vumi.stop_webapp_cluster {env}")
        leftovers = kill_leftover_webapps([host])
        assert not leftovers, f"vumi.stop_webapp_cluster over salt-ssh left webapps running: {leftovers}"


def salt_ssh(ctl, command_line, timeout=300):
    """
    ``salt-ssh -c <conf> --roster-file <roster> 'web*' <command_line> --out=json``, run by
    the shell so the quoting is the user's own: (exit code, this host's return, process).
    """
    line = " ".join([
        shlex.quote(str(BIN / "salt-ssh")), "-c", shlex.quote(str(ctl["conf"])),
        "--roster-file", shlex.quote(str(ctl["roster"])), "--out=json", shlex.quote(TARGET), command_line,
    ])  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=timeout, check=False)
    print(f"[{time.monotonic() - started:5.1f}s] salt-ssh {command_line}")
    try:
        data = json.loads(proc.stdout)[ctl["host"].id]
    except (ValueError, KeyError, TypeError):
        data = None
    return proc.returncode, data, proc


def show(ctl, command_line, data, outputter):
    """Print what salt-ssh prints for this return (its outputter, no colours)."""
    text = salt.output.out_format({ctl["host"].id: data}, outputter, ctl["opts"])
    print(f"\n$ salt-ssh '{TARGET}' {command_line}\n{text}")


@pytest.fixture(scope="module")
def synced(controller):
    """``salt-run saltutil.sync_all`` with the same config: puts the vumi wrapper where salt-ssh loads it."""
    proc = subprocess.run(
        [str(BIN / "salt-run"), "-c", str(controller["conf"]), "--out=json", "saltutil.sync_all"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    synced = json.loads(proc.stdout)
    assert "wrapper.vumi" in synced["wrapper"] and "modules.vumi" in synced["modules"], synced
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
    status, body = http_get(port)
    assert status == 200, body
    assert body["env"] == env and body["port"] == port, body
    return body


# --------------------------------------------------------------------------
# The story
# --------------------------------------------------------------------------


def test_state_apply_staging_over_ssh(synced, host):
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
    assert not pathlib.Path("/var/praekelt").exists()

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
    assert data["old_pid"] == before["pid"] and data["pid"] != before["pid"], data
    after = serving(port, "staging")
    assert after["pid"] == data["pid"] and after["release"] == before["release"], after
    assert serving(other, "staging")["pid"] == other_before["pid"]  # its port only


def test_execute_production_over_ssh(synced, host):
    apply(synced, "production")
    (port,) = host.ports["production"]
    body = serving(port, "production")
    assert body["greeting"] == "hello from production"  # no settings in pillar: the repo's own file

    line = 'vumi.execute production "./manage.py syncdb"'
    code, data, proc = salt_ssh(synced, line)
    assert code == 0 and isinstance(data, dict), (proc.stdout, proc.stderr)
    show(synced, line, data, "nested")
    assert data["retcode"] == 0 and "Synced 2 tables into tmp/sample.sqlite" in data["stdout"], data
    assert data["release"] == body["release"]
    assert (host.env_root("production") / "shared" / "tmp" / "sample.sqlite").is_file()
    assert serving(port, "production")["pid"] == body["pid"]

    # a failing command fails the salt-ssh job
    code, data, proc = salt_ssh(synced, 'vumi.execute production "./manage.py fail"')
    assert code != 0, proc.stdout
    assert data["retcode"] == 3 and "failing on purpose" in data["stderr"], data
