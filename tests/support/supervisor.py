"""
A real supervisord for the tests: the ``supervisor`` package of ``.venv``, started by
the test with its own config file, socket and include folder in a temporary folder,
the way a host's init system runs Debian's. Pillar names it (``supervisor_settings``),
so the bundle takes the same code path as on a real host.
"""

import contextlib
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time
import xmlrpc.client

from supervisor.xmlrpc import SupervisorTransport

from support.helpers import REPO

SUPERVISORD = REPO / ".venv" / "bin" / "supervisord"

CONFIG = """\
[unix_http_server]
file={folder}/supervisor.sock
chmod=0700

[supervisord]
logfile={folder}/supervisord.log
pidfile={folder}/supervisord.pid
childlogdir={folder}/childlogs
nodaemon=true
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{folder}/supervisor.sock

[include]
files = {folder}/conf.d/*.conf
"""


class Supervisord:
    """One supervisord this test run started; ``stop`` ends it (and so its programs)."""

    def __init__(self, folder=None):
        # a unix socket's path must be short (108 bytes): a folder of its own under /tmp
        self.folder = pathlib.Path(folder or tempfile.mkdtemp(prefix="vumi-sv-"))
        self.conf_dir = self.folder / "conf.d"
        self.conf_file = self.folder / "supervisord.conf"
        self.socket = self.folder / "supervisor.sock"
        self.proc = None
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.folder / "childlogs").mkdir(exist_ok=True)
        self.conf_file.write_text(CONFIG.format(folder=self.folder))

    def settings(self):
        """Pillar ``vumi:supervisor`` pointing at this supervisord."""
        return {"conf_dir": str(self.conf_dir), "conf_file": str(self.conf_file), "manage_service": False}

    def start(self, timeout=20):
        # its environment is what an init system would give it: nothing of the test's
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            [str(SUPERVISORD), "-c", str(self.conf_file)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, xmlrpc.client.Error):
                if self.rpc().supervisor.getState()["statename"] == "RUNNING":
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"supervisord exited: {(self.folder / 'supervisord.log').read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("supervisord did not come up")

    def rpc(self):
        """supervisor's own client (what supervisorctl uses), on this supervisord's socket."""
        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, serverurl=f"unix://{self.socket}")
        )

    def processes(self):
        return {p["group"] + ":" + p["name"]: p for p in self.rpc().supervisor.getAllProcessInfo()}

    def clear(self):
        """Drop every program file and group (their processes stop): the next test starts clean."""
        for lock in self.conf_dir.glob(".*.lock"):  # the bundle's port locks
            lock.unlink()
        files = list(self.conf_dir.glob("*.conf"))
        if not files and not self.processes():
            return
        for path in files:
            path.unlink()
        rpc = self.rpc()
        _, _, removed = rpc.supervisor.reloadConfig()[0]
        for group in removed:
            rpc.supervisor.stopProcessGroup(group, True)
            rpc.supervisor.removeProcessGroup(group)

    def stop(self, timeout=30):
        """SIGTERM to the supervisord we started: it stops its programs, then exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def remove(self):
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
