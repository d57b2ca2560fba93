"""
Benchmark: how fast deploys are, through the commands users type.

    .venv/bin/python bench/deploy_speed.py [--runs 3] [--packages 6] [--no-real]

Makes, in a temp dir, the bundled sample app made heavier by real local
packages in its requirements: Django and Twisted (what Vumi ran on), their
wheels fetched once with ``pip download`` and committed into the app's
``wheels/`` (installed offline from there), plus a few packages of many modules
built here; a masterless Salt config like scripts/demo's; and measures with
``salt-call --local`` subprocesses:

1. a fresh deploy (new requirements: a new virtualenv is built);
2. a code-only redeploy (new commit, same requirements), and its ratio to (1);
3. a no-op ``state.apply vumi`` against ``test.ping``, and their ratio;
4. the disk a code-only release adds, against the checkout's size.

Medians of ``--runs`` runs. A benchmark, not a test: it prints, it asserts nothing.
"""

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "sample"))

import make_repo as sample  # noqa: E402

SALT_CALL = pathlib.Path(sys.executable).with_name("salt-call")


def heavy_package(root, index, modules=150):
    """A real package: many modules of real code, so installing it costs what it does."""
    name = f"benchpkg{index}"
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f'"""Benchmark package {index}."""\nVERSION = "1.0"\n')
    body = "".join(
        f"def function_{n}(value):\n    return [value * {n} + i for i in range(10)]\n\n" for n in range(40)
    )
    for m in range(modules):
        (pkg / f"module_{m}.py").write_text(f'"""Module {m}."""\n\n{body}')
    return pkg, name, "1.0"


def du(path):
    out = subprocess.run(["du", "-sk", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def real_wheels(dest):
    """Django and Twisted with their dependencies, as wheels; [] when the registry is out of reach."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(dest),
         "django", "twisted"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        print(f"(no real packages: pip download failed: {proc.stderr.strip()[-200:]})")
        return []
    return ["django", "twisted"]


class Bench:
    def __init__(self, work, packages, real=True):
        self.work = work
        self.upstream = work / "upstream"
        extra = [heavy_package(work / "pkgs", i) for i in range(packages)]
        sample.make_repo(self.upstream, extra_wheels=extra)
        names = real_wheels(self.upstream / "wheels") if real else []
        if names:
            sample.git(self.upstream, "add", "wheels")
            sample.git(self.upstream, "commit", "--quiet", "-m", "real wheels")
            sample.git(self.upstream, "branch", "--quiet", "--force", "staging", "master")
        self.real = names
        requirements = "--no-index\n--find-links wheels\nvumi-sample-lib==1.0\n" + "".join(
            f"{name}=={version}\n" for _, name, version in extra
        ) + "".join(f"{name}\n" for name in names)
        sample.commit_file(self.upstream, "staging", "config/requirements.pip", requirements, "heavier")
        self.config = work / "salt"
        self.config.mkdir()
        pillar = work / "pillar"
        pillar.mkdir()
        (pillar / "top.sls").write_text("base:\n  '*':\n    - vumi.defaults\n    - vumi.staging\n    - bench\n")
        (pillar / "vumi").symlink_to(REPO / "pillar" / "vumi")
        self.port = 18123
        (pillar / "bench.sls").write_text(
            json.dumps({"vumi": {
                "base_dir": str(work / "srv"),
                "repo_url": str(self.upstream),
                "user": os.environ.get("USER") or subprocess.check_output(["id", "-un"], text=True).strip(),
                "environments": {"staging": {"ports": [self.port]}},
            }})  # fmt: skip
        )
        (self.config / "minion").write_text(json.dumps({
            "file_client": "local",
            "root_dir": str(work / "salt-root"),
            "log_file": str(work / "salt.log"),
            "file_roots": {"base": [str(REPO / "salt")]},
            "pillar_roots": {"base": [str(pillar)]},
            "module_dirs": [str(REPO / "salt" / "_modules")],
            "states_dirs": [str(REPO / "salt" / "_states")],
        }))  # fmt: skip
        self.root = work / "srv" / "vumi" / "staging"
        self.commits = 0

    def salt_call(self, *args):
        started = time.monotonic()
        proc = subprocess.run(
            [str(SALT_CALL), "--local", "-c", str(self.config), "-l", "quiet", "--out=json", *args],
            capture_output=True,
            text=True,
        )
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"salt-call {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return elapsed, json.loads(proc.stdout)["local"]

    def commit(self, path, text):
        self.commits += 1
        sample.commit_file(self.upstream, "staging", path, text, f"bench commit {self.commits}")

    def deploy(self):
        elapsed, ret = self.salt_call("vumi.deploy", "staging")
        return elapsed, sum(ret["timings"].values()), ret


def median(values):
    return statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packages", type=int, default=6)
    parser.add_argument("--no-real", dest="real", action="store_false",
                        help="skip Django and Twisted (no registry needed)")
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="vumi-bench-"))
    bench = Bench(work, args.packages, args.real)
    try:
        fresh, fresh_inner, code, code_inner, release_kb = [], [], [], [], []
        for run in range(args.runs):
            # new requirements: a changed requirements file names a new virtualenv
            req = (bench.upstream / "config" / "requirements.pip").read_text()
            bench.commit("config/requirements.pip", req + f"# run {run}\n")
            wall, inner, ret = bench.deploy()
            assert ret["virtualenv_built"], ret
            fresh.append(wall)
            fresh_inner.append(inner)
            bench.commit("sampleapp/bench_note.py", f"NOTE = {run}\n")
            wall, inner, ret = bench.deploy()
            assert not ret["virtualenv_built"], ret
            code.append(wall)
            code_inner.append(inner)
            release_kb.append(du(ret["path"]))
        checkout_kb = du(bench.root / "shared" / "repositories" / "vumi") - du(
            bench.root / "shared" / "repositories" / "vumi" / ".git"
        )
        bench.salt_call("state.apply", "vumi", 'pillar={"branch": "staging"}')  # deploy + start webapp
        noop, ping = [], []
        for _ in range(max(args.runs, 5)):
            noop.append(bench.salt_call("state.apply", "vumi", 'pillar={"branch": "staging"}')[0])
            ping.append(bench.salt_call("test.ping")[0])
        releases_before = sorted(os.listdir(bench.root / "releases"))
        bench.salt_call("state.apply", "vumi", 'pillar={"branch": "staging"}')
        assert sorted(os.listdir(bench.root / "releases")) == releases_before
    finally:
        with_webapp = bench.root / "shared" / "tmp" / "pids"
        if with_webapp.is_dir() and any(with_webapp.iterdir()):
            bench.salt_call("vumi.stop_webapp_cluster", "staging")
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("1. fresh deploy (new requirements)", f"{median(fresh):.2f} s", f"in module {median(fresh_inner):.2f} s"),
        ("2. code-only redeploy", f"{median(code):.2f} s", f"in module {median(code_inner):.3f} s"),
        ("   ratio 2/1 (salt-call wall; in module)",
         f"{median(code) / median(fresh):.3f}", f"{median(code_inner) / median(fresh_inner):.4f}"),
        ("3. no-op state.apply vumi", f"{median(noop):.2f} s", ""),
        ("   test.ping", f"{median(ping):.2f} s", ""),
        ("   ratio apply/ping", f"{median(noop) / median(ping):.2f}", ""),
        ("4. disk added by a code-only release", f"{median(release_kb)} KiB", ""),
        ("   checkout size (files, no .git)", f"{checkout_kb} KiB", ""),
        ("   ratio release/checkout", f"{median(release_kb) / checkout_kb:.2f}", ""),
    ]  # fmt: skip
    real = f" + {', '.join(bench.real)} (with dependencies)" if bench.real else ""
    print(f"vumi-salt deploy benchmark: {args.runs} runs each (medians), {args.packages} generated packages"
          f"{real}, {os.cpu_count()} cores")  # fmt: skip
    for label, value, extra in rows:
        print(f"{label:<42} {value:>12}  {extra}")


if __name__ == "__main__":
    main()
