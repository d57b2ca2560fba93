"""
Never break what runs: the health-gated switch, a failure injected
at each stage while an old webapp serves, and file ownership when Salt runs as root
(deploys SIGKILLed at 20+ moments and concurrent deploys: test_crashes.py).

Everything is real: git repositories, virtualenvs, webapp processes on free loopback
ports answering HTTP, ``salt-call --local`` in subprocesses. The environments are built
as test_crashes.py's are (tests/support/failures.py: one virtualenv per module, copied).
"""

import contextlib
import os
import socket
import stat
import subprocess
import time
import types

import pytest
from salt.exceptions import CommandExecutionError

import make_repo as sample  # tests/conftest.py puts sample/ on sys.path
import vumi_errors
from support import users
from support.failures import (  # noqa: F401  (mod: the fixture of the module)
    Tally,
    base_settings,
    clone_origin,
    current_problem,
    current_state,
    history,
    kill_processes_under,
    leftovers,
    mod,
    processes_under,
    seed_venv,
    serving,
    snapshot,
)
from support.failures import free_port as _free_port
from support.helpers import env_root, sls_pillar

ENV = "staging"
TALLY = Tally()


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\n" + TALLY.report())


class Env(types.SimpleNamespace):
    def use(self, **more):
        """Swap the settings (the loader reads them as minion options); health checks on unless ``more`` says."""
        self.settings = dict(base_settings(self.base_dir, self.repo), health_check=True, supervisor=self.supervisor)
        self.settings.update(more)
        self.loaders.use(self.settings)
        return self.vumi

    @property
    def vumi(self):
        return self.loaders.vumi


@pytest.fixture
def env(mod, tmp_path, repo, base_dir, supervisor):
    """``staging`` ready to deploy: its own upstream repo and base_dir, the seeded virtualenv, health checks on."""
    env = Env(
        loaders=mod.loaders,
        seed=mod.seed,
        repo=repo,
        base_dir=base_dir,
        root=env_root(base_dir, ENV),
        top=tmp_path,
        supervisor=supervisor.settings(),
    )
    env.use()
    seed_venv(mod.seed, base_dir, owner=mod.owner)
    try:
        yield env
    finally:
        with contextlib.suppress(Exception):
            for port, info in env.vumi.webapp_status(ENV).items():
                if info["running"]:
                    env.vumi.stop_webapp(ENV, port, ports=[port])
        kill_processes_under(base_dir)  # the safety net: nothing a test started outlives it


def health_files(root):
    found = []
    for sub in ("shared/tmp/pids", "shared/logs"):
        folder = root / sub
        found += [p.name for p in folder.iterdir() if ".health." in p.name] if folder.is_dir() else []
    return found


# --------------------------------------------------------------------------
# 1. The health-gated switch
# --------------------------------------------------------------------------


def test_health_check_is_off_by_default_in_the_module(env):
    vumi = env.use(health_check=None)
    assert vumi.settings(ENV)["health_check"] is None
    result = vumi.deploy(ENV)
    assert result["health"] is None  # no webapp was started and asked: it would be the evidence here


def test_health_gate_checks_the_new_release_on_a_spare_port_and_leaves_nothing_running(env):
    vumi = env.vumi
    old = vumi.deploy(ENV)
    port = _free_port()
    vumi.start_webapp(ENV, port, ports=[port])
    old_release, old_pid = serving(port)
    assert old_release == old["release"]

    sample.commit_file(env.repo, ENV, "NEWS", "new\n", "News")
    new = vumi.deploy(ENV, health_path="/health")

    health = new["health"]
    assert health["path"] == "/health"
    assert health["evidence"] == f"GET /health on port {health['port']} answered HTTP 200 OK"
    assert health["port"] != port
    assert os.readlink(env.root / "current") == f"releases/{new['release']}"
    # the instance checked is gone: its port is closed, its pid file and log removed
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", health["port"]), timeout=0.5).close()
    assert health_files(env.root) == []
    assert processes_under(env.root) == [old_pid]
    # the running webapp was not touched: same process, still the old release (a deploy does not restart)
    assert serving(port) == (old["release"], old_pid)
    TALLY.add("health gate", current_problem(env.root) is None, "HTTP 200 on /health: switched")

    # the default probe: GET /, any answer below 500
    plain = vumi.deploy(ENV)
    assert plain["health"]["evidence"] == f"GET / on port {plain['health']['port']} answered HTTP 200 OK"
    assert plain["health"]["path"] == "/"
    assert serving(port) == (old["release"], old_pid)
    TALLY.add("health gate", current_problem(env.root) is None, "GET / 200: switched")


#: an app of one status for every path (no /health route): python's own http.server
ONE_STATUS_APP = """\
import http.server, sys, time
STATUS, DELAY = int(sys.argv[2]), float(sys.argv[3])
time.sleep(DELAY)  # a slow cold start: the port opens late
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(STATUS)
        self.end_headers()
        self.wfile.write(b"status %d" % STATUS)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.mark.parametrize(
    "status, switched",
    [(404, True), (200, True), (302, True), (500, False), (503, False)],
)
def test_the_default_probe_passes_any_answer_below_500_on_root(env, status, switched):
    """An app nobody here wrote: no /health route (a fresh Django project answers / with 404 in production)."""
    vumi = env.vumi
    good = vumi.deploy(ENV, health_check=False)["release"]
    sample.commit_file(env.repo, ENV, "onestatus.py", ONE_STATUS_APP, "an app of one status")
    command = f"{{venv}}/bin/python onestatus.py {{port}} {status} 0.5"
    try:
        new = vumi.deploy(ENV, webapp_command=command)
    except CommandExecutionError as exc:
        assert not switched, exc
        assert "GET / on port" in str(exc) and f"answered HTTP {status}" in str(exc), exc
        assert vumi.current(ENV)["release"] == good
    else:
        assert switched, new
        assert f"GET / on port {new['health']['port']} answered HTTP {status}" in new["health"]["evidence"]
        assert vumi.current(ENV)["release"] == new["release"]
    assert processes_under(env.root) == []


def test_the_probe_gives_up_as_soon_as_the_webapp_exits(env):
    """A webapp that opens its port, then dies: no waiting out health_timeout."""
    vumi = env.vumi
    vumi.deploy(ENV, health_check=False)
    sample.commit_file(env.repo, ENV, "dies.py", (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "time.sleep(0.5); print('dying on purpose', flush=True); sys.exit(3)\n"
    ), "an app that dies after listening")  # fmt: skip
    started = time.monotonic()
    with pytest.raises(CommandExecutionError) as failed:
        vumi.deploy(ENV, webapp_command="{venv}/bin/python dies.py {port}", health_timeout=60)
    assert time.monotonic() - started < 50, "the probe waited for health_timeout (60 s)"
    assert "exited with code 3" in str(failed.value) and "dying on purpose" in str(failed.value), failed.value
    # its kind and facts, carried from the deploy user's process when there is one
    assert isinstance(failed.value, vumi_errors.HealthFailed), type(failed.value)
    assert failed.value.stage == "health" and failed.value.evidence in str(failed.value)
    assert failed.value.release not in {r["release"] for r in vumi.releases(ENV)}  # moved aside, kept:
    assert failed.value.kept.endswith(f"/failed/{failed.value.release}")


def test_the_state_turns_the_health_check_on_when_there_are_ports(env):
    states = env.loaders.loaders.states

    def deploy_comment(**settings):
        env.use(**settings)
        sample.commit_file(env.repo, ENV, "sampleapp/note.py", f"NOTE = {settings!r}\n", "a change to deploy")
        ret = states.vumi.deployed(ENV)
        assert ret["result"] is True, ret
        return ret["comment"]

    port = _free_port()  # not running: the gate starts its own webapp on a spare port
    assert "health check passed" in deploy_comment(ports=[port], health_check=None)
    assert "health check passed" not in deploy_comment(ports=[], health_check=None)  # nothing to protect
    assert "health check passed" not in deploy_comment(ports=[port], health_check=False)  # pillar says no
    assert "health check passed" in deploy_comment(ports=[port], health_check=True)


def test_the_sls_keeps_the_old_webapp_serving_when_the_new_release_is_unhealthy(env):
    port = _free_port()
    vumi = env.use(ports=[port], health_check=None, health_path="/health")  # the SLS decides the gate

    def apply():
        ret = env.loaders.loaders.modules.state.apply("vumi", pillar=sls_pillar(env.settings["supervisor"], branch=ENV))
        assert not ret.errors, ret.errors
        return {s.full_return["__id__"]: s for s in ret}

    first = apply()
    assert all(s.result is True for s in first.values()), {k: s.comment for k, s in first.items()}
    good = vumi.current(ENV)["release"]
    old_release, old_pid = serving(port)
    assert old_release == good

    sample.commit_file(env.repo, ENV, "HEALTH_FAIL", "on purpose\n", "An unhealthy release")
    second = apply()
    deployed, webapp = second[f"vumi-{ENV}-deployed"], second[f"vumi-{ENV}-webapp"]
    assert deployed.result is False
    assert "failed at stage 'health'" in deployed.comment
    assert "answered HTTP 500 Internal Server Error" in deployed.comment
    assert "unhealthy: HEALTH_FAIL" in deployed.comment
    kept = deployed.changes["failed_release"]["new"]  # the one change: the half-built release, set aside
    assert os.path.dirname(kept) == str(env.root / "failed") and os.path.isdir(kept), deployed.changes
    assert webapp.result is False and webapp.changes == {}  # not restarted: its requisite failed
    assert os.readlink(env.root / "current") == f"releases/{good}"
    assert serving(port) == (good, old_pid)
    entry = history(env.root)[-1]
    assert (entry["action"], entry["stage"]) == ("failed", "health")
    assert "HTTP 500" in entry["reason"]
    TALLY.add("health gate", current_problem(env.root) is None and serving(port) == (good, old_pid),
              "state.apply: HTTP 500, old webapp kept serving")  # fmt: skip


# --------------------------------------------------------------------------
# 3. A failure injected at each stage, with the old webapp serving
# --------------------------------------------------------------------------


def _commit_missing_package(env):
    sample.commit_file(
        env.repo, ENV, "config/requirements.pip",
        sample.requirements() + "vumi-no-such-package==1.0\n",
        "Require a package that exists nowhere here",
    )  # fmt: skip


def _commit_crash_at_start(env):
    sample.git(env.repo, "checkout", "-q", ENV)
    wsgi = (env.repo / "sampleapp" / "wsgi.py").read_text()
    sample.commit_file(env.repo, ENV, "sampleapp/wsgi.py",
                       "raise RuntimeError('crashing at start on purpose')\n" + wsgi, "Crash at start")  # fmt: skip


def _commit_health_fail(env):
    sample.commit_file(env.repo, ENV, "HEALTH_FAIL", "on purpose\n", "An unhealthy release")


def _chattr_works(tmp):
    probe = tmp / "chattr-probe"
    probe.mkdir()
    try:
        done = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "chattr is not installed"
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True, check=False)
        probe.rmdir()
    return None if done.returncode == 0 else f"chattr +i failed: {done.stderr.strip()}"


def _read_only(relpath, also=None):
    """
    A folder nothing can be written to, as "a full disk": root ignores file
    modes, so the folder is made immutable (chattr +i) instead.
    """

    def setup(env):
        if os.geteuid() == 0:
            reason = _chattr_works(env.top)
            if reason:
                pytest.skip(f"as root a read-only folder needs chattr +i: {reason}")
            flag, path = ["chattr", "+i"], env.root / relpath
            undo = ["chattr", "-i", str(path)]
        else:
            flag, path = ["chmod", "0555"], env.root / relpath
            undo = ["chmod", "0755", str(path)]
        if also:
            also(env)
        subprocess.run([*flag, str(path)], check=True)
        return lambda: subprocess.run(undo, check=True)

    return setup


def _add_requirement_comment(env):
    sample.commit_file(env.repo, ENV, "config/requirements.pip",
                       sample.requirements() + "# changed\n", "New requirements")  # fmt: skip


def _unreachable(env):
    return {"repo_url": f"http://127.0.0.1:{_free_port()}/vumi.git"}


FAILURES = {
    # name: (break something, deploy kwargs (or a function of env giving them), stage, evidence in the message)
    "pip: a package that does not exist locally": (
        _commit_missing_package, {}, "virtualenv", ["vumi-no-such-package"]),
    "fetch: a revision that does not exist": (
        None, {"revision": "0123456789abcdef0123456789abcdef01234567"}, "fetch",
        ["'0123456789abcdef0123456789abcdef01234567' is not in"]),
    "fetch: an unreachable repo": (None, _unreachable, "fetch", ["git fetch http://127.0.0.1:", "failed"]),
    "health: a webapp that exits at start": (
        # gunicorn exits (code 1 or 3, by when its worker fails) before or after it opens the port:
        # the wait for the port sees it ("did not start: exited with code"), or the probe does
        _commit_crash_at_start, {}, "health", ["exited with code", "crashing at start on purpose"]),
    "health: /health answers 500": (
        _commit_health_fail, {"health_path": "/health"}, "health", ["answered HTTP 500 Internal Server Error", "unhealthy: HEALTH_FAIL"]),
    "health: a webapp that never listens": (
        None, {"webapp_command": "sleep 60", "start_timeout": 1}, "health", ["did not open the port within 1s"]),
    "cut_release: releases/ read-only (full disk)": (
        _read_only("releases"), {}, "cut_release", ["Operation not permitted" if os.geteuid() == 0 else "Permission denied"]),
    "virtualenv: shared/virtualenvs read-only (full disk)": (
        _read_only("shared/virtualenvs", also=_add_requirement_comment), {}, "virtualenv",
        ["creating the virtualenv", "shared/virtualenvs/"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failure_at_each_stage_keeps_current_and_the_old_webapp(env, case):
    breaker, kwargs, stage, evidence = FAILURES[case]
    vumi = env.vumi
    good = vumi.deploy(ENV)["release"]
    port = _free_port()
    vumi.start_webapp(ENV, port, ports=[port])
    old = serving(port)
    assert old[0] == good
    tip = sample.git(env.repo, "rev-parse", ENV)
    undo = breaker(env) if breaker else None
    kwargs = kwargs(env) if callable(kwargs) else kwargs
    # the environment's own: its tree and its webapps' log folder (root's; the old webapp logs on)
    own = [env.root, env.repo, env.root.parent / ".logs" / env.root.name]
    outside = snapshot(env.top, skip=own)
    lines = len(history(env.root))

    try:
        with pytest.raises(CommandExecutionError) as exc:
            vumi.deploy(ENV, **kwargs)
    finally:
        if undo:
            undo()

    message = str(exc.value)
    valid = current_problem(env.root) is None and current_state(env.root) == ("link", f"releases/{good}")
    still_serving = serving(port) == old
    TALLY.add("failure injection", valid and still_serving, f"{case}: failed at stage {stage!r}, old webapp serving")
    assert f"failed at stage {stage!r}" in message, message
    for text in evidence:
        assert text in message, message
    assert valid, current_problem(env.root)
    assert still_serving  # the same process, still the old release
    assert processes_under(env.root) == [old[1]]  # no health-check instance left behind
    assert health_files(env.root) == [] or stage == "health"  # a failed check keeps its log, as evidence
    assert not [p for p in health_files(env.root) if p.endswith(".pid")]
    assert snapshot(env.top, skip=own) == outside
    (entry,) = history(env.root)[lines:]
    assert (entry["action"], entry["stage"], entry["previous"]) == ("failed", stage, good)
    assert evidence[0] in entry["reason"]
    if entry["release"]:  # named: out of releases/, and in failed/ if anything of it was made
        assert not (env.root / "releases" / entry["release"]).exists()
        kept = env.root / "failed" / entry["release"]
        assert kept.is_dir() == (f"the half-built release is kept in {kept}" in message), message
        assert kept.is_dir() or stage == "cut_release"

    # repaired, the next deploy goes through (the old webapp still untouched)
    sample.git(env.repo, "checkout", "-q", ENV)
    sample.git(env.repo, "reset", "-q", "--hard", tip)
    after = vumi.deploy(ENV)
    assert os.readlink(env.root / "current") == f"releases/{after['release']}"
    assert leftovers(env.root) == []
    assert serving(port) == old


# --------------------------------------------------------------------------
# 6. File ownership: Salt as root, the environment's user another one
# --------------------------------------------------------------------------


@pytest.fixture
def system_user():
    why_not = users.can_deploy_as_another_user()
    if why_not:
        pytest.skip(why_not)
    with users.throwaway_user() as user:
        yield user


@pytest.fixture
def reachable():
    """/tmp/pytest-of-root is mode 0700: the user could not even reach the tree there."""
    with users.reachable_dir("vumi-owner-") as top:
        yield top


def test_files_and_the_webapp_belong_to_the_configured_user(mod, system_user, reachable):
    top = reachable
    repo = users.give(clone_origin(mod.origin, top / "upstream"), system_user)
    base_dir = top / "srv"
    base_dir.mkdir()
    mod.loaders.use(base_settings(base_dir, repo, user=system_user.pw_name, python=users.PYTHON, health_check=True))
    vumi = mod.loaders.vumi
    root = env_root(base_dir, ENV)
    try:
        result = vumi.deploy(ENV)
        assert result["virtualenv_built"] is True  # built by the user, with Debian's python
        port = _free_port()
        run = vumi.start_webapp(ENV, port, ports=[port])
        assert serving(port) == (result["release"], run["pid"])

        with open(f"/proc/{run['pid']}/status", encoding="utf-8") as fh:
            status = dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)
        assert status["Uid"].split() == [str(system_user.pw_uid)] * 4
        assert status["Gid"].split() == [str(system_user.pw_gid)] * 4
        assert "0" not in status["Groups"].split()  # none of root's groups

        not_owned, writable = [], []
        for parent, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(parent, name)
                st = os.lstat(path)
                if st.st_uid != system_user.pw_uid:
                    not_owned.append(os.path.relpath(path, root))
                if not stat.S_ISLNK(st.st_mode) and st.st_mode & stat.S_IWOTH:
                    writable.append(os.path.relpath(path, root))
        st = os.lstat(root)
        assert st.st_uid == system_user.pw_uid and not st.st_mode & stat.S_IWOTH
        assert not_owned == [], not_owned
        assert writable == [], writable
        assert not (root / "shared" / "tmp" / "pids" / f"webapp.{port}.pid").exists()  # supervisor tracks it
        # the webapp's log: supervisord (root) writes it in root's folder, the user reads it (group)
        # through its link in shared/logs; no link of the user's can send root's writes elsewhere
        link = root / "shared" / "logs" / f"webapp.{port}.log"
        logs = base_dir / "vumi" / ".logs" / ENV
        assert link.is_symlink() and link.resolve() == logs / f"webapp.{port}.log"
        assert (logs / f"webapp.{port}.log").stat().st_uid == 0
        assert (logs.stat().st_uid, logs.stat().st_gid, stat.S_IMODE(logs.stat().st_mode)) == (
            0, system_user.pw_gid, 0o750)  # fmt: skip
        assert stat.S_IMODE((root / "shared" / "logs").stat().st_mode) == 0o750  # logs may tell secrets
        for folder in ("releases", "shared", "shared/tmp/pids", "shared/virtualenvs"):
            assert stat.S_IMODE((root / folder).stat().st_mode) == 0o755, folder
        # above the environment: root's, so that no environment's user can replace another's
        for folder in (base_dir, base_dir / "vumi"):
            assert (folder.stat().st_uid, stat.S_IMODE(folder.stat().st_mode)) == (0, 0o755), folder
        valid = current_problem(root) is None
        TALLY.add("ownership", valid, f"user {system_user.pw_name}: {sum(1 for _ in root.rglob('*'))} paths "
                                      "owned by it, none world-writable; webapp uid/gid its own")  # fmt: skip
        vumi.stop_webapp(ENV, port, ports=[port])
    finally:
        kill_processes_under(base_dir)
