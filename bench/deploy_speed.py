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
4. the disk a code-only release adds, against the checkout's size;
5. against plain Salt (``git.latest`` + ``virtualenv.managed`` + ``file.symlink``,
   the same app, paired runs): a fresh ``state.apply vumi`` with uv, and with pip;
6. a no-op ``state.apply vumi`` against a one-state SLS (``test.succeed_without_changes``)
   given the same ``pillar=`` on the command line: Salt's own floor for that command;
7. a code-only ``state.apply vumi`` against its floor: the one-state SLS plus the raw
   git work (fetch, ``clone --shared``, checkout, switch by rename);
8. deploy #50 of an environment against deploy #1 (time in the module), beside the raw
   git work of the same 50 commits (git's own growth, any tool's) and, after each, the
   same raw git work on a copy of the upstream that never changes: what the machine
   itself drifts by over the run (page cache, writeback, a VM's neighbours), which is
   no history's. The ratio is also given deploy by deploy against that control;
9. salt-ssh, two hosts on loopback (a real sshd, as the salt-ssh tests start it): a
   no-op ``state.apply vumi`` against a one-state SLS on the same roster, and the
   SSH logins each makes per host (skipped without Debian's openssh-server).

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
sys.path.insert(0, str(REPO / "tests"))

import make_repo as sample  # noqa: E402
from support.supervisor import Supervisord  # noqa: E402  (a supervisord of the bench's own)

SALT_CALL = pathlib.Path(sys.executable).with_name("salt-call")


def heavy_package(root, index, modules=150):
    """A real package: many modules of real code, so installing it costs what it does."""
    name = f"benchpkg{index}"
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f'"""Benchmark package {index}."""\nVERSION = "1.0"\n')
    body = "".join(f"def function_{n}(value):\n    return [value * {n} + i for i in range(10)]\n\n" for n in range(40))
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
        # the sample's own (Django, gunicorn, psycopg from the wheelhouse), plus the heavy ones
        requirements = (
            (self.upstream / "config" / "requirements.pip").read_text()
            + "".join(f"{name}=={version}\n" for _, name, version in extra)
            + "".join(f"{name}\n" for name in names)
        )
        sample.commit_file(self.upstream, "staging", "config/requirements.pip", requirements, "heavier")
        self.config = work / "salt"
        self.config.mkdir()
        pillar = work / "pillar"
        pillar.mkdir()
        (pillar / "top.sls").write_text("base:\n  '*':\n    - vumi.defaults\n    - vumi.staging\n    - bench\n")
        (pillar / "vumi").symlink_to(REPO / "pillar" / "vumi")
        self.port = 18123
        self.supervisord = Supervisord(work / "supervisor").start()  # what runs the webapp
        (pillar / "bench.sls").write_text(
            json.dumps(
                {
                    "vumi": {
                        "supervisor": self.supervisord.settings(),
                        "base_dir": str(work / "srv"),
                        "repo_url": str(self.upstream),
                        "user": os.environ.get("USER") or subprocess.check_output(["id", "-un"], text=True).strip(),
                        # bench: the same branch without webapps, for the state runs compared with plain Salt
                        "environments": {
                            "staging": {"ports": [self.port]},
                            "bench": {"branch": "staging", "ports": []},
                        },
                    }
                }
            )  # fmt: skip
        )
        sls = work / "sls"
        sls.mkdir()
        (sls / "one.sls").write_text("one:\n  test.succeed_without_changes: []\n")
        (sls / "plain.sls").write_text(PLAIN_SLS)
        (self.config / "minion").write_text(json.dumps({
            "file_client": "local",
            "root_dir": str(work / "salt-root"),
            "log_file": str(work / "salt.log"),
            "file_roots": {"base": [str(REPO / "salt"), str(sls)]},
            "pillar_roots": {"base": [str(pillar)]},
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


PLAIN_SLS = """\
{#- the plain-Salt way to deploy the same app: a clone, a virtualenv, a link #}
{%- set d = pillar["plain_dir"] %}
plain-code:
  git.latest:
    - name: {{ pillar["plain_repo"] }}
    - target: {{ d }}/code
    - rev: staging
    - branch: staging
plain-venv:
  virtualenv.managed:
    - name: {{ d }}/ve
    - requirements: {{ d }}/code/config/requirements.pip
    - cwd: {{ d }}/code
    - pip_cache_dir: {{ pillar["plain_cache"] }}
    - require:
      - git: plain-code
plain-current:
  file.symlink:
    - name: {{ pillar["plain_current"] }}
    - target: {{ d }}
    - force: True
    - require:
      - virtualenv: plain-venv
"""


def apply(bench, sls, pillar):
    return bench.salt_call("state.apply", sls, "pillar=" + json.dumps(pillar))


def raw_git_work(work, upstream, n):
    """The git a code-only deploy cannot avoid, timed: fetch, clone --shared, checkout, switch."""
    cache = work / "raw" / "cache"
    if not cache.exists():
        subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(upstream), str(cache)], check=True)
    started = time.monotonic()
    run = lambda *a, cwd=None: subprocess.run(a, cwd=cwd, check=True, capture_output=True)  # noqa: E731
    run("git", "fetch", "--quiet", "--prune", "--force", "origin", "+refs/heads/*:refs/remotes/origin/*", cwd=cache)
    release = work / "raw" / f"release{n}"
    run("git", "clone", "--quiet", "--shared", "--no-checkout", "--template=", str(cache), str(release))
    run("git", "checkout", "--quiet", "--detach", "origin/staging", cwd=release)
    tmp = work / "raw" / "current.tmp"
    os.symlink(release, tmp)
    os.replace(tmp, work / "raw" / "current")
    return time.monotonic() - started


def ssh_ratios(work, runs):
    """Section 9: salt-ssh no-op apply against a one-state SLS; None without sshd."""
    from support import fleet, ssh  # pylint: disable=import-outside-toplevel  (sshd's binary checked first)

    if not ssh.SSHD.is_file():
        return None
    root = work / "ssh"
    (root / "sls").mkdir(parents=True)
    (root / "sls" / "one.sls").write_text("one:\n  test.succeed_without_changes: []\n")
    ports = fleet.free_ports(2, {18123})
    hosts = [fleet.make_host(root / f"web-{i}", f"web-{i}", {"staging": [ports[i]]}) for i in range(2)]
    pillar = fleet.write_pillar(root / "pillar", hosts)
    with ssh.running_sshd(root / "sshd") as sshd:
        ctl = ssh.write_controller(root, sshd, [h.id for h in hosts], pillar)
        ssh.sync_all(ctl)
        vumi = """state.apply vumi pillar='{"branch": "staging"}'"""
        one_state = """state.apply one pillar='{"branch": "staging"}'"""  # the same pillar=: see section 6
        try:
            code, data, proc, _ = ssh.salt_ssh(ctl, "web-*", vumi)
            if code != 0:
                raise SystemExit(f"salt-ssh state.apply vumi failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            noop, one, noop_logins, one_logins = [], [], [], []
            for _ in range(runs):
                for line, times, logins in ((vumi, noop, noop_logins), (one_state, one, one_logins)):
                    before = ssh.sessions(sshd)
                    code, data, proc, elapsed = ssh.salt_ssh(ctl, "web-*", line)
                    assert code == 0 and all(not r["changes"] for d in data.values() for r in d.values()), data
                    times.append(elapsed)
                    logins.append((ssh.sessions(sshd) - before) / len(hosts))
        finally:
            ssh.salt_ssh(ctl, "web-*", "vumi.stop_webapp_cluster staging")
            fleet.kill_leftover_webapps(hosts)  # and each host's supervisord
    return {"noop": median(noop), "one": median(one), "noop_logins": median(noop_logins),
            "one_logins": median(one_logins)}  # fmt: skip


def median(values):
    return statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packages", type=int, default=6)
    parser.add_argument("--no-ssh", dest="ssh", action="store_false", help="skip section 9 (salt-ssh)")
    parser.add_argument(
        "--no-real", dest="real", action="store_false", help="skip Django and Twisted (no registry needed)"
    )
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
        # the floor is given the same command-line pillar: Salt compiles the pillar again for
        # one (0.1-0.2 s here), a cost of the command line, not of the bundle
        one, one_bare = [], []
        for _ in range(max(args.runs, 5)):
            one.append(apply(bench, "one", {"branch": "staging"})[0])
            one_bare.append(apply(bench, "one", {})[0])

        # 5. fresh state runs, paired: ours with uv, ours with pip, plain Salt (pip)
        ours_uv, ours_pip, plain = [], [], []
        for run in range(args.runs):
            for installer, times in (("uv", ours_uv), ("pip", ours_pip)):
                req = (bench.upstream / "config" / "requirements.pip").read_text()
                bench.commit("config/requirements.pip", req + f"# {installer} {run}\n")
                wall, ret = apply(bench, "vumi", {"branch": "bench", "vumi": {"installer": installer}})
                (deployed,) = [r for k, r in ret.items() if "deployed" in k]
                assert deployed["result"] and deployed["changes"], deployed
                times.append(wall)
            wall, ret = apply(bench, "plain", {
                "plain_dir": str(work / "plain" / str(run)), "plain_repo": str(bench.upstream),
                "plain_cache": str(work / "plain-cache"), "plain_current": str(work / "plain-current"),
            })  # fmt: skip
            assert all(r["result"] for r in ret.values()), ret
            plain.append(wall)

        # 7. code-only state runs against one-state SLS + raw git. First, untimed, as many
        # code-only runs as releases are kept: pruning the releases of section 5 removes a
        # virtualenv each (a cost of those fresh deploys); then every kept release shares one
        for run in range(5):
            bench.commit("sampleapp/bench_note.py", f"NOTE = 'warm-up {run}'\n")
            apply(bench, "vumi", {"branch": "bench"})
        code_apply, floor = [], []
        for run in range(args.runs):
            bench.commit("sampleapp/bench_note.py", f"NOTE = 'apply {run}'\n")
            code_apply.append(apply(bench, "vumi", {"branch": "bench"})[0])
            floor.append(median(one) + raw_git_work(work, bench.upstream, run))

        # 8. fifty code-only deploys: the first five against the last five (time in the module)
        # beside each, the raw git work on its own clone of the same upstream: what git itself
        # costs more as the upstream and a clone's objects grow, for any tool; then the same on
        # a mirror that never changes: the machine's own drift over the run
        still = work / "still"  # the control: the same git work, on a history that never grows
        still.mkdir()
        subprocess.run(
            ["git", "clone", "--quiet", "--mirror", str(bench.upstream), str(still / "upstream")], check=True
        )
        history, raw, control = [], [], []
        for run in range(50):
            bench.commit("sampleapp/bench_note.py", f"NOTE = 'history {run}'\n")
            history.append(sum(bench.salt_call("vumi.deploy", "bench")[1]["timings"].values()))
            raw.append(raw_git_work(work, bench.upstream, f"h{run}"))
            shutil.rmtree(work / "raw" / f"releaseh{run}")
            control.append(raw_git_work(still, still / "upstream", f"c{run}"))
            shutil.rmtree(still / "raw" / f"releasec{run}")
        first5, last5 = median(history[:5]), median(history[-5:])
        raw_first5, raw_last5 = median(raw[:5]), median(raw[-5:])
        control_first5, control_last5 = median(control[:5]), median(control[-5:])
        against = [h / c for h, c in zip(history, control)]  # each deploy / the control run beside it
        against_ratio = median(against[-5:]) / median(against[:5])
        try:
            ssh = ssh_ratios(work, max(args.runs, 3)) if args.ssh else None
        except Exception as exc:  # pylint: disable=broad-except
            ssh = None  # the other figures still print
            print(f"(salt-ssh section failed: {exc!r})")
    finally:
        bench.supervisord.remove()  # and with it the webapp it ran
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
        ("5. fresh state.apply vumi, uv", f"{median(ours_uv):.2f} s", ""),
        ("   fresh state.apply vumi, pip", f"{median(ours_pip):.2f} s", ""),
        ("   plain Salt (git.latest+virtualenv.managed)", f"{median(plain):.2f} s", ""),
        ("   ratio ours(uv)/plain  (goal <= 0.5)", f"{median(ours_uv) / median(plain):.2f}", ""),
        ("   ratio ours(pip)/plain (goal <= 1.0)", f"{median(ours_pip) / median(plain):.2f}", ""),
        ("6. one-state SLS apply, same pillar=", f"{median(one):.2f} s", f"without pillar= {median(one_bare):.2f} s"),
        ("   ratio no-op apply/one-state (goal <= 1.1)", f"{median(noop) / median(one):.2f}", ""),
        ("7. code-only state.apply vumi", f"{median(code_apply):.2f} s", ""),
        ("   floor: one-state apply + raw git", f"{median(floor):.2f} s", ""),
        ("   ratio code-only/floor (goal <= 1.2)", f"{median(code_apply) / median(floor):.2f}", ""),
        ("8. deploy #1-5 / #46-50, in module", f"{first5:.3f} s", f"{last5:.3f} s"),
        ("   ratio #50/#1 (goal <= 1.1)", f"{last5 / first5:.2f}", ""),
        ("   raw git #1-5 / #46-50", f"{raw_first5:.3f} s", f"{raw_last5:.3f} s"),
        ("   ratio #50/#1 without git's own growth", f"{(last5 - raw_last5) / (first5 - raw_first5):.2f}", ""),
        ("   control: the same git, history unchanged", f"{control_first5:.3f} s", f"{control_last5:.3f} s"),
        ("   the machine's drift (control #50/#1)", f"{control_last5 / control_first5:.2f}", ""),
        ("   ratio #50/#1, each against its control", f"{against_ratio:.2f}", "(goal <= 1.1)"),
    ]  # fmt: skip
    if ssh:
        rows += [
            ("9. salt-ssh no-op state.apply vumi, 2 hosts", f"{ssh['noop']:.2f} s",
             f"{ssh['noop_logins']:g} SSH logins per host"),
            ("   salt-ssh state.apply one-state SLS", f"{ssh['one']:.2f} s", f"{ssh['one_logins']:g} SSH logins per host"),
            ("   ratio vumi/one-state (goal <= 1.5)", f"{ssh['noop'] / ssh['one']:.2f}", ""),
        ]  # fmt: skip
    real = f" + {', '.join(bench.real)} (with dependencies)" if bench.real else ""
    print(f"vumi-salt deploy benchmark: {args.runs} runs each (medians), {args.packages} generated packages"
          f"{real}, {os.cpu_count()} cores")  # fmt: skip
    for label, value, extra in rows:
        print(f"{label:<42} {value:>12}  {extra}")


if __name__ == "__main__":
    main()
