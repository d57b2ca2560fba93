"""
A real PostgreSQL server for the tests: Debian's ``postgresql`` binaries, a cluster
made by the test in a temporary folder, run as an unprivileged user (Debian's
``postgres`` account, else a throw-away one the test makes and removes) on a
loopback port. Its superuser logs in with a password over TCP, as Salt's
``postgres_*`` states do with ``db_user``/``db_password``.
"""

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile

import pytest

from support.nginx import NGINX


def bin_dir():
    """The newest installed PostgreSQL's binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


#: the mark of a test module that runs the SLS with a database and nginx in front
NEEDS_POSTGRES_AND_NGINX = pytest.mark.skipif(
    bin_dir() is None or NGINX is None, reason="needs Debian's postgresql and nginx (.ci/run installs them)"
)


class Postgres:
    ADMIN = "vumi_admin"

    def __init__(self):
        self.bin = bin_dir()
        self.password = secrets.token_hex(12)
        self.made_user = None
        try:
            self.user = pwd.getpwnam("postgres")
        except KeyError:
            name = "vumi-pg-" + secrets.token_hex(3)
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True
            )
            self.made_user = name
            self.user = pwd.getpwnam(name)
        # a folder of its own under /tmp: pytest's are root's alone (0700), closed to the server's user
        self.folder = tempfile.mkdtemp(prefix="vumi-pg-")
        os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
        self.data = os.path.join(self.folder, "data")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.started = False

    def _run(self, *args, **kwargs):
        return subprocess.run(
            list(args), user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[], cwd=self.folder,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, capture_output=True, text=True, check=True, **kwargs,
        )  # fmt: skip

    def start(self):
        pwfile = os.path.join(self.folder, "pw")
        with open(pwfile, "w", encoding="utf-8") as fh:
            fh.write(self.password + "\n")
        os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        self._run(
            f"{self.bin}/initdb", "-D", self.data, "-U", self.ADMIN, f"--pwfile={pwfile}",
            "--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        os.remove(pwfile)
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        self._run(
            f"{self.bin}/pg_ctl", "-D", self.data, "-o", options, "-l", os.path.join(self.folder, "log"), "-w", "start"
        )
        self.started = True
        return self

    def psql(self, sql, database="postgres"):
        """Run SQL as the superuser over TCP; its output, unaligned."""
        res = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.ADMIN, "-d", database, "-Atc", sql],
            env={"PATH": "/usr/bin:/bin", "PGPASSWORD": self.password, "LANG": "C.UTF-8"},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return res.stdout.strip()

    def database_settings(self, password, **extra):
        """Pillar ``vumi:database`` for this server."""
        return dict(
            {
                "password": password,
                "host": "127.0.0.1",
                "port": self.port,
                "admin_user": self.ADMIN,
                "admin_password": self.password,
                "runas": pwd.getpwuid(os.getuid()).pw_name,
            },
            **extra,
        )

    def stop(self):
        if self.started:
            self._run(f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
            self.started = False

    def remove(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self.made_user:
                subprocess.run(["userdel", self.made_user], check=False)
