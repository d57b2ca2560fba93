"""
A salt-ssh setup on this one machine, for the salt-ssh tests and the benchmark:
a real ``sshd`` from Debian's openssh-server on a free loopback port, with
throw-away host and user keys and a config of its own (nothing system-wide but
``/run/sshd``, which sshd insists on), and a controlling host's config (master
config, roster, caches) in a folder of the caller's.
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

from support.fleet import REPO, free_ports

SSHD = pathlib.Path("/usr/sbin/sshd")
BIN = REPO / ".venv" / "bin"


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


@contextlib.contextmanager
def running_sshd(root):
    """sshd on a loopback port, for the user running this: {port, key, known_hosts, root, log}."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
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
            "StrictModes no",  # temp dirs are not laid out as sshd wants ~/.ssh
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
    log = root / "sshd.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc)
        host_key = (root / "hostkey.pub").read_text().split()[:2]
        (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
        yield {"port": port, "key": root / "userkey", "known_hosts": root / "known_hosts", "root": root, "log": log}
    finally:
        proc.terminate()
        proc.wait(10)


def sessions(sshd):
    """How many SSH logins sshd has accepted so far (one per remote command or copy)."""
    return sshd["log"].read_text(errors="replace").count("Accepted publickey")


def write_controller(root, sshd, host_ids, pillar_dir):
    """The controlling host's config in ``root``: a roster of ``host_ids`` (all this machine), a master config."""
    root = pathlib.Path(root)
    state = root / "var"
    # the interpreter running this, not a pyenv shim: salt-ssh's shim cannot exec
    # those, and the thin's compiled parts are built for this Python
    python_dir = os.path.dirname(os.path.realpath(sys._base_executable))  # pylint: disable=protected-access
    roster = root / "roster"
    roster.write_text(
        json.dumps({
            host_id: {
                "host": "127.0.0.1",
                "port": sshd["port"],
                "user": getpass.getuser(),
                "priv": str(sshd["key"]),
                "thin_dir": str(root / f"thin-{host_id}"),
                "set_path": f"{python_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            } for host_id in host_ids
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
        "file_roots": {"base": [str(REPO / "salt"), *([str(root / "sls")] if (root / "sls").is_dir() else [])]},
        "pillar_roots": {"base": [str(pillar_dir)]},
    }
    (conf / "master").write_text(json.dumps(master, indent=2) + "\n")
    # what installing salt-master would have made: salt-run writes its job there
    (state / "cache" / "proc").mkdir(parents=True)
    return {"conf": conf, "roster": roster}


def sync_all(ctl):
    """``salt-run saltutil.sync_all`` with the controller's config: puts the vumi wrapper where salt-ssh loads it."""
    proc = subprocess.run(
        [str(BIN / "salt-run"), "-c", str(ctl["conf"]), "--out=json", "saltutil.sync_all"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"salt-run saltutil.sync_all failed: {proc.stderr}")
    return json.loads(proc.stdout)


def salt_ssh(ctl, target, command_line, timeout=300):
    """
    ``salt-ssh -c <conf> --roster-file <roster> <target> <command_line> --out=json``, run by
    the shell so the quoting is the user's own: (exit code, returns by host, process, seconds).
    """
    line = " ".join([
        shlex.quote(str(BIN / "salt-ssh")), "-c", shlex.quote(str(ctl["conf"])),
        "--roster-file", shlex.quote(str(ctl["roster"])), "--out=json", "--static", shlex.quote(target), command_line,
    ])  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.monotonic() - started
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    return proc.returncode, data, proc, elapsed
