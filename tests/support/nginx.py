"""
A real nginx in front of the webapps, and a load through it: what the nginx tests and
the database tests share. nginx is Debian's binary with a prefix, config, logs and temp
folders of the test's own, on a loopback port; the system's nginx is never touched.
"""

import getpass
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Nginx:
    """A real nginx with its own prefix, config, logs and temp dirs, on a loopback port."""

    def __init__(self, prefix, port, sites):
        self.prefix, self.port, self.sites = pathlib.Path(prefix), port, pathlib.Path(sites)
        self.conf = self.prefix / "nginx.conf"
        self.proc = None

    def write_config(self):
        p = self.prefix
        temp = "\n".join(
            f"    {kind}_temp_path {p}/temp/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf.write_text(
            f"user {getpass.getuser()};\n"
            "worker_processes 1;\n"
            f"error_log {p}/error.log info;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"    access_log {p}/access.log;\n"
            f"{temp}\n"
            f"    include {self.sites}/*.conf;\n"
            "}\n"
        )

    def command(self, *args):
        return [NGINX, "-p", f"{self.prefix}/", "-c", str(self.conf), "-e", f"{self.prefix}/error.log", *args]

    def check(self):
        return subprocess.run(self.command("-t"), capture_output=True, text=True, check=False, timeout=30)

    def start(self):
        self.write_config()
        checked = self.check()
        assert checked.returncode == 0, checked.stderr
        with open(self.prefix / "stderr.log", "wb") as stderr:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                self.command("-g", f"daemon off; pid {self.prefix}/nginx.pid;"),
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            assert self.proc.poll() is None, (self.prefix / "stderr.log").read_text() + self.errors()
            assert time.monotonic() < deadline, "nginx did not open its port"
            time.sleep(0.02)
        return self

    def reload(self):
        """SIGHUP, as ``nginx -s reload`` sends it: the master re-reads the config (keeps the old one if bad)."""
        marker = (self.prefix / "error.log").stat().st_size
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reconfiguring" not in self.errors(marker):
            assert time.monotonic() < deadline, self.errors()
            time.sleep(0.02)
        time.sleep(0.3)  # the new workers take over

    def errors(self, offset=0):
        with open(self.prefix / "error.log", encoding="utf-8", errors="replace") as fh:
            fh.seek(offset)
            return fh.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Load:
    """
    Requests through nginx from a few threads until stopped, or until ``max_requests``
    or ``max_seconds`` are reached (the load is bounded whatever happens). Each
    answer is kept: (time, status, release, port, pid) or the error.
    """

    def __init__(self, port, threads=4, max_requests=200000, max_seconds=120, path="/"):
        self.url = f"http://127.0.0.1:{port}{path}"
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.answers, self.failed = [], []
        self.sent = 0

    def _run(self):
        deadline = time.monotonic() + self.max_seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            with self.lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            try:
                with urllib.request.urlopen(self.url, timeout=10) as resp:
                    status, body = resp.status, resp.read()
                data = json.loads(body)
                # the pid of the process supervisor runs: gunicorn's master, the worker's parent
                answer = (time.monotonic(), status, data["release"], data["port"], data["ppid"])
            except (OSError, ValueError, KeyError) as exc:  # urllib's errors are OSErrors
                answer = (time.monotonic(), getattr(exc, "code", None), None, None, repr(exc))
            with self.lock:
                (self.answers if answer[1] == 200 else self.failed).append(answer)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def wait_for(self, count, timeout=30):
        """
        Until ``count`` more answers came in (the load is flowing). The bound is longer than
        a request's own (10 s): a request that hangs is then counted as failed, and named.
        """
        with self.lock:
            target = len(self.answers) + count
        began = time.monotonic()
        while len(self.answers) < target:
            assert time.monotonic() - began < timeout, (
                f"the load stalled: {len(self.answers)} of {target} answers after {timeout}s, "
                f"{self.sent} sent, last failures {self.failed[-3:]}"
            )
            time.sleep(0.01)

    def since(self, moment):
        with self.lock:
            return [a for a in self.answers if a[0] >= moment]


def report(what, load, began, ended, ports):
    """The figures (pytest -s): requests sent and failed in all, those answered during the roll, its duration."""
    during = sum(1 for a in load.answers if began <= a[0] <= ended)
    print(
        f"\n[nginx load] {what}: cluster of {len(ports)} ports, requests sent {load.sent}, "
        f"failed {len(load.failed)}, answered during the roll {during}, the roll took {ended - began:.2f}s"
    )
