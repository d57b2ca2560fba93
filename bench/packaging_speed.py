"""
Benchmark: a uv-locked app, deployed through the commands users type.

    .venv/bin/python bench/packaging_speed.py [--runs 3]

Makes, in a temp dir, a Flask app with Django, celery, psycopg and gunicorn beside it,
locked by ``uv lock`` against the wheelhouse (``scripts/bootstrap`` fills it), and a
masterless Salt config like scripts/demo's; then measures, paired run by run, with
``salt-call --local``:

1. a first ``state.apply vumi`` of the app (a new virtualenv from its uv.lock) against
   plain Salt's ``git.latest`` + ``virtualenv.managed`` (pip) + ``file.symlink`` of the same
   packages (the lock's pins as a requirements file): the ratio;
2. a code-only ``state.apply vumi`` (a new commit, the same lock: the virtualenv is reused)
   against its floor: a one-state SLS given the same pillar, plus the raw git work of a
   release (fetch, ``clone --shared``, checkout, switch);
3. what compiling the bytecode at the build costs and saves (``install:compile_bytecode``): a
   first ``state.apply vumi`` with a port (its health check imports the app before the switch)
   with it and without it (the default), and the first request to the port after each; and
   ``uv sync`` of the lock with and without ``--compile-bytecode``, then the app's first import.

Medians of ``--runs`` runs, each from an empty uv cache for (1) and (3): a host's first deploy.
A benchmark, not a test: it prints, it asserts nothing.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from deploy_speed import PLAIN_SLS, REPO, SALT_CALL, median, raw_git_work  # noqa: E402

from support import apps  # noqa: E402  (deploy_speed put tests/ on sys.path)
from support.supervisor import Supervisord  # noqa: E402  (a supervisord of the bench's own)

DEPS = '    "flask>=3",\n    "gunicorn",\n    "django",\n    "celery",\n    "psycopg[binary]",'
IMPORTS = "import hello, flask, django.db.models, django.contrib.admin, celery, kombu, psycopg, gunicorn.app.base"


def make_app(dest):
    repo = apps.flask_pyproject(dest)
    (repo / "pyproject.toml").write_text(apps.PYPROJECT.format(deps=DEPS))
    apps.lock(repo)
    sample_git(repo, "add", "--all")
    sample_git(repo, "commit", "--quiet", "-m", "heavier, locked")
    return repo


def sample_git(repo, *args):
    import make_repo  # pylint: disable=import-outside-toplevel

    return make_repo.git(repo, *args)


class Masterless:
    def __init__(self, work, repo, supervisor):
        self.work, self.repo = work, repo
        pillar, sls, self.config = work / "pillar", work / "sls", work / "salt"
        for path in (pillar, sls, self.config):
            path.mkdir()
        (pillar / "top.sls").write_text("base:\n  '*':\n    - bench\n")
        user = subprocess.check_output(["id", "-un"], text=True).strip()
        (pillar / "bench.sls").write_text(json.dumps({"vumi": {
            "base_dir": str(work / "srv"), "repo_url": str(repo), "user": user, "wsgi_module": "hello:create_app()",
            "cache_dir": str(work / "cache"), "install": {"env": apps.OFFLINE},
            "supervisor": supervisor, "environments": {"staging": {"ports": []}}}}))  # fmt: skip
        (sls / "one.sls").write_text("one:\n  test.succeed_without_changes: []\n")
        (sls / "plain.sls").write_text(PLAIN_SLS)
        (self.config / "minion").write_text(json.dumps({
            "file_client": "local", "root_dir": str(work / "salt-root"), "log_file": str(work / "salt.log"),
            "file_roots": {"base": [str(REPO / "salt"), str(sls)]}, "pillar_roots": {"base": [str(pillar)]}}))  # fmt: skip

    def apply(self, sls, pillar):
        started = time.monotonic()
        proc = subprocess.run([str(SALT_CALL), "--local", "-c", str(self.config), "-l", "quiet", "--out=json",
                               "state.apply", sls, "pillar=" + json.dumps(pillar)], capture_output=True, text=True)  # fmt: skip
        elapsed = time.monotonic() - started
        ret = json.loads(proc.stdout)["local"] if proc.stdout.strip() else proc.stderr
        if proc.returncode != 0 or not all(s["result"] for s in ret.values()):
            raise SystemExit(f"state.apply {sls} failed:\n{proc.stdout}\n{proc.stderr}")
        return elapsed

    def deploy(self):
        """A first ``vumi.deploy``: its stages' seconds."""
        proc = subprocess.run([str(SALT_CALL), "--local", "-c", str(self.config), "-l", "quiet", "--out=json",
                               "vumi.deploy", "staging"], capture_output=True, text=True, check=True)  # fmt: skip
        return json.loads(proc.stdout)["local"]["timings"]


def uv_sync(repo, venv, cache, compile_bytecode):
    env = dict(os.environ, UV_PROJECT_ENVIRONMENT=str(venv), UV_CACHE_DIR=str(cache), UV_PYTHON_DOWNLOADS="never",
               **apps.OFFLINE)  # fmt: skip
    flags = ["--compile-bytecode"] if compile_bytecode else []
    started = time.monotonic()
    subprocess.run([str(apps.UV), "sync", "--locked", "--no-dev", "--no-install-project", "--quiet", *flags],
                   cwd=repo, env=env, check=True)  # fmt: skip
    synced = time.monotonic() - started
    started = time.monotonic()
    subprocess.run(
        [f"{venv}/bin/python", "-c", IMPORTS], cwd=repo, check=True, env=dict(os.environ, PYTHONPATH=str(repo))
    )
    return synced, time.monotonic() - started


def free_port():
    import socket  # pylint: disable=import-outside-toplevel

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_request(port):
    """Seconds the first GET / takes once the apply is over (the new release is serving)."""
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
        resp.read()
    return time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="vumi-bench-packaging-"))
    try:
        repo = make_app(work / "app")
        plain_reqs = work / "plain-requirements.txt"
        exported = subprocess.run([str(apps.UV), "export", "--quiet", "--locked", "--no-dev", "--no-emit-project",
                                   "--no-hashes", "--format", "requirements-txt"], cwd=repo, check=True,
                                  capture_output=True, text=True, env=dict(os.environ, **apps.OFFLINE)).stdout  # fmt: skip
        plain_reqs.write_text(f"--no-index\n--find-links {apps.WHEELHOUSE}\n{exported}")
        plain_sls = PLAIN_SLS.replace("{{ d }}/code/config/requirements.pip", str(plain_reqs))
        supervisord = Supervisord(work / "supervisor").start()
        salt = Masterless(work, repo, supervisord.settings())
        (work / "sls" / "plain.sls").write_text(plain_sls)

        ours, plain = [], []
        for run in range(args.runs):
            for cache in (work / "cache", work / "plain-cache"):
                shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(work / "srv", ignore_errors=True)
            ours.append(salt.apply("vumi", {"branch": "staging"}))
            plain.append(salt.apply("plain", {
                "plain_dir": str(work / "plain" / str(run)), "plain_repo": str(repo),
                "plain_cache": str(work / "plain-cache"), "plain_current": str(work / "plain-current")}))  # fmt: skip

        shutil.rmtree(work / "cache", ignore_errors=True)
        shutil.rmtree(work / "srv", ignore_errors=True)
        first_timings = salt.deploy()
        code_only, floor = [], []
        for run in range(args.runs):
            sample_git(repo, "commit", "--quiet", "--allow-empty", "-m", f"code only {run}")
            code_only.append(salt.apply("vumi", {"branch": "staging"}))
            one = salt.apply("one", {"branch": "staging"})
            floor.append(one + raw_git_work(work, repo, 1000 + run))

        compiled, plain_sync, served = [], [], {True: [], False: []}
        port = free_port()
        for run in range(args.runs):
            for flag, out in ((True, compiled), (False, plain_sync)):
                venv, cache = work / f"ve-{flag}-{run}", work / f"uv-cache-{flag}-{run}"
                out.append(uv_sync(repo, venv, cache, flag))
                shutil.rmtree(work / "cache", ignore_errors=True)
                shutil.rmtree(work / "srv", ignore_errors=True)
                supervisord.clear()
                applied = salt.apply("vumi", {"branch": "staging", "vumi": {
                    "environments": {"staging": {"ports": [port]}},
                    "install": {"env": apps.OFFLINE, "compile_bytecode": flag}}})  # fmt: skip
                served[flag].append((applied, first_request(port)))
        supervisord.clear()

        rows = [
            ("1. first state.apply vumi, uv.lock (ours)", f"{median(ours):.2f} s"),
            ("   plain Salt: git.latest + virtualenv.managed (pip)", f"{median(plain):.2f} s"),
            ("   ratio ours/plain (goal <= 0.25)", f"{median(ours) / median(plain):.2f}"),
            ("2. code-only state.apply vumi (virtualenv reused)", f"{median(code_only):.2f} s"),
            ("   floor: one-state SLS + raw git work", f"{median(floor):.2f} s"),
            ("   ratio to the floor", f"{median(code_only) / median(floor):.2f}"),
            ("3. first state.apply with a port, compiled at the build", f"{median([r[0] for r in served[True]]):.2f} s"),
            ("   the same, compiled at the health check's imports", f"{median([r[0] for r in served[False]]):.2f} s"),
            ("   first request after the switch, compiled at the build", f"{median([r[1] for r in served[True]]) * 1000:.1f} ms"),
            ("   first request after the switch, at the health check", f"{median([r[1] for r in served[False]]) * 1000:.1f} ms"),
            ("   uv sync --compile-bytecode, then the first import", " + ".join(
                f"{median([r[i] for r in compiled]):.2f} s" for i in (0, 1))),
            ("   uv sync without it, then the first import (compiles)", " + ".join(
                f"{median([r[i] for r in plain_sync]):.2f} s" for i in (0, 1))),
        ]  # fmt: skip
        width = max(len(r[0]) for r in rows)
        print(
            f"packaging benchmark: {args.runs} run(s), uv-locked app of {sum('==' in line for line in exported.splitlines())} pinned packages"
        )
        for label, value in rows:
            print(f"{label:<{width}}  {value}")
        print("the last first deploy's stages (s):", ", ".join(f"{k} {v:.2f}" for k, v in first_timings.items()))
    finally:
        if "supervisord" in locals():
            supervisord.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
