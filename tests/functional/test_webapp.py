"""
Functional tests of the webapp functions of the ``vumi`` execution module
(issue #3): real processes on free loopback ports, real HTTP requests.

One environment (``staging``) is deployed once for the whole file (a fresh
virtualenv costs seconds); every test starts its own ports and stops them
(the ``webapps`` fixture stops whatever a failing test left running), so the
tests do not depend on each other. Tests that need a newer release deploy
again into the same environment, reusing its virtualenv.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import make_repo as sample
import pytest
from helpers import alive, http_get, module_env, stop_webapps
from salt.exceptions import CommandExecutionError, SaltInvocationError

ENV = "staging"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------
# Fixtures: one deployed environment for the module
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(minion_opts, origin, tmp_path_factory):
    """``staging`` deployed once from its own upstream clone; the module through Salt's loader."""
    # the settings come from the minion options alone: the repo's pillar (base_dir
    # /var/praekelt, the real repo URL) would win over them, so its roots are empty here
    top = tmp_path_factory.mktemp("webapp")
    with module_env(minion_opts, origin, top, start_timeout=20, stop_timeout=5) as env:
        try:
            effective = env.vumi.settings(ENV)
            assert (effective["base_dir"], effective["repo_url"]) == (str(env.base_dir), str(env.repo)), effective
            env.vumi.deploy(ENV)
            yield env
        finally:
            # safety net: whatever still has a pid file in this environment is stopped
            stop_webapps(env.vumi, ENV)


@pytest.fixture
def vumi(deployed):
    """The module of the deployed environment (the conftest's ``webapps`` stops ports through it)."""
    return deployed.vumi


@pytest.fixture
def root(deployed):
    return deployed.root


@pytest.fixture
def current(vumi):
    """The current release's name and revision, as the module reports them."""
    info = vumi.current(ENV)
    return info["release"], info["revision"]


@pytest.fixture
def start(vumi, webapps, free_port):
    """Start the webapp on a fresh free port (tracked for teardown); returns (port, result)."""

    def go(port=None, **kwargs):
        port = free_port() if port is None else port
        webapps.append((ENV, port))
        return port, vumi.start_webapp(ENV, port, **kwargs)

    return go


# --------------------------------------------------------------------------
# Helpers: what a user of the machine would look at
# --------------------------------------------------------------------------


def pidfile(root, port):
    return root / "shared" / "tmp" / "pids" / f"webapp.{port}.pid"


def logfile(root, port):
    return root / "shared" / "logs" / f"webapp.{port}.log"


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def foreign_sleep():
    """A process that is not ours (``sleep 60``); the test checks it survives, then it is killed."""
    proc = subprocess.Popen(["sleep", "60"])  # pylint: disable=consider-using-with
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def foreign_listener():
    """A socket this test listens on at 127.0.0.1: a port taken by someone else."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock
    finally:
        sock.close()


def listener_works(sock):
    """The foreign listener still accepts connections (and nothing closed it)."""
    port = sock.getsockname()[1]
    sock.settimeout(2)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
        client.sendall(b"ping")
        # the module's own probes (connect, close) may be queued before ours
        for _ in range(50):
            conn, _ = sock.accept()
            with conn:
                conn.settimeout(2)
                if conn.recv(4) == b"ping":
                    return True
    return False


# --------------------------------------------------------------------------
# start
# --------------------------------------------------------------------------


def test_start_serves_the_current_release(start, root, current):
    port, ret = start()
    # returns only once the port answers: no retry needed
    assert port_open(port)
    assert ret["started"] is True
    assert ret["port"] == port
    pid = ret["pid"]
    assert alive(pid)

    assert pidfile(root, port).read_text().splitlines()[0] == str(pid)
    assert logfile(root, port).is_file()
    assert "Serving sampleapp" in logfile(root, port).read_text()

    # its own session and process group: it outlives the Salt job and is stopped as a group
    assert os.getsid(pid) == pid
    assert os.getpgid(pid) == pid
    assert os.getpgid(pid) != os.getpgid(0)

    status, body = http_get(port)
    assert status == 200
    release, revision = current
    assert ret["release"] == release
    assert body["env"] == ENV
    assert body["release"] == release
    assert body["revision"] == revision
    assert body["settings"] == "environments.staging"
    assert body["port"] == port
    assert body["pid"] == pid


def test_start_twice_is_a_noop(start, vumi):
    port, first = start()
    second = vumi.start_webapp(ENV, port)
    assert second["started"] is False
    assert "already running" in second["comment"]
    assert second["pid"] == first["pid"]
    assert http_get(port)[1]["pid"] == first["pid"]


def test_start_accepts_port_as_keyword_and_string(vumi, webapps, free_port, root):
    by_keyword, as_string = free_port(), free_port()
    webapps.extend([(ENV, by_keyword), (ENV, as_string)])
    assert vumi.start_webapp(ENV, port=by_keyword)["port"] == by_keyword
    assert vumi.start_webapp(ENV, str(as_string))["port"] == as_string
    for port in (by_keyword, as_string):
        assert http_get(port)[1]["port"] == port
    assert vumi.webapp_status(ENV, port=str(as_string))[as_string]["running"] is True
    assert vumi.restart_webapp(ENV, port=by_keyword)["started"] is True
    assert vumi.stop_webapp(ENV, port=str(as_string))["stopped"] is True
    assert vumi.stop_webapp(ENV, port=by_keyword)["stopped"] is True
    assert not pidfile(root, by_keyword).exists() and not pidfile(root, as_string).exists()


def test_start_without_a_release_fails_clearly(vumi, free_port):
    with pytest.raises(CommandExecutionError, match="no current release"):
        vumi.start_webapp("production", free_port())


# --------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------


def test_status_of_running_and_stopped_ports(start, vumi, free_port, current):
    port, ret = start()
    idle = free_port()
    status = vumi.webapp_status(ENV, ports=[idle])  # idle is configured, port has a pid file
    assert set(status) >= {port, idle}
    running = status[port]
    assert running["running"] is True
    assert running["pid"] == ret["pid"]
    assert running["release"] == current[0]
    assert running["current"] is True
    assert running["listening"] is True
    assert isinstance(running["uptime"], float) and 0 <= running["uptime"] < 60
    assert status[idle]["running"] is False
    assert status[idle]["pid"] is None
    assert status[idle]["listening"] is False

    assert vumi.webapp_status(ENV, port)[port]["pid"] == ret["pid"]
    assert vumi.webapp_status(ENV, idle) == {idle: status[idle]}
    # the output is plain data a user reads (JSON-friendly)
    json.dumps(status)


def test_status_after_the_process_died_behind_our_back(start, vumi, root):
    port, ret = start()
    os.kill(ret["pid"], signal.SIGKILL)
    assert wait_for(lambda: not alive(ret["pid"]))
    assert vumi.webapp_status(ENV, port)[port]["running"] is False
    assert vumi.stop_webapp(ENV, port)["stopped"] is False
    again = vumi.start_webapp(ENV, port)
    assert again["started"] is True and again["pid"] != ret["pid"]
    assert http_get(port)[1]["pid"] == again["pid"]


# --------------------------------------------------------------------------
# restart after a new deploy
# --------------------------------------------------------------------------


def test_restart_after_deploy_runs_the_new_release(start, vumi, deployed, current):
    port, ret = start()
    old_release, old_revision = current
    sha = sample.commit_file(deployed.repo, "staging", "NEWS", f"port {port}\n", "a new release")
    new = vumi.deploy(ENV)
    assert new["revision"] == sha and new["release"] != old_release

    # a deploy does not restart: the port still runs the old release, no longer current
    before = vumi.webapp_status(ENV, port)[port]
    assert before["running"] is True
    assert before["pid"] == ret["pid"]
    assert before["release"] == old_release
    assert before["current"] is False
    assert http_get(port)[1]["revision"] == old_revision

    restarted = vumi.restart_webapp(ENV, port)
    assert restarted["started"] is True
    assert restarted["release"] == new["release"]
    assert restarted["old_pid"] == ret["pid"]
    assert restarted["old_release"] == old_release
    assert restarted["pid"] != ret["pid"]
    assert wait_for(lambda: not alive(ret["pid"]))

    body = http_get(port)[1]
    assert body["release"] == new["release"]
    assert body["revision"] == sha
    assert body["pid"] == restarted["pid"]
    after = vumi.webapp_status(ENV, port)[port]
    assert after["current"] is True
    assert after["release"] == new["release"]


def test_restart_of_a_stopped_port_starts_it(vumi, webapps, free_port):
    port = free_port()
    webapps.append((ENV, port))
    ret = vumi.restart_webapp(ENV, port)
    assert ret["started"] is True and ret["old_pid"] is None
    assert http_get(port)[1]["pid"] == ret["pid"]


# --------------------------------------------------------------------------
# stop
# --------------------------------------------------------------------------


def test_stop_then_stop_again(start, vumi, root):
    port, ret = start()
    stopped = vumi.stop_webapp(ENV, port)
    assert stopped["stopped"] is True
    assert stopped["pid"] == ret["pid"]
    assert stopped["killed"] is False  # went on SIGTERM, within stop_timeout
    assert not alive(ret["pid"])
    assert not pidfile(root, port).exists()
    assert not port_open(port)
    assert "Server stopped" in logfile(root, port).read_text()

    again = vumi.stop_webapp(ENV, port)
    assert again["stopped"] is False
    assert "not running" in again["comment"]


def test_stop_kills_a_webapp_that_ignores_sigterm(start, vumi, root):
    stubborn = (
        "{venv}/bin/python -c \"import signal, socket, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)\""
    )
    port, ret = start(webapp_command=stubborn)
    assert port_open(port)
    stopped = vumi.stop_webapp(ENV, port, stop_timeout=0.5)
    assert stopped["stopped"] is True and stopped["killed"] is True
    assert not alive(ret["pid"])
    assert not port_open(port)
    assert not pidfile(root, port).exists()


# --------------------------------------------------------------------------
# clusters
# --------------------------------------------------------------------------


def test_cluster_start_status_restart_stop(vumi, webapps, free_port, root, current):
    ports = [free_port() for _ in range(3)]
    webapps.extend((ENV, p) for p in ports)
    a, b, c = ports

    started = vumi.start_webapp_cluster(ENV, a, str(b), c)  # ints and strings, positionally
    assert [r["port"] for r in started] == ports
    assert all(r["started"] for r in started)
    pids = {r["port"]: r["pid"] for r in started}
    assert len(set(pids.values())) == 3
    for port in ports:
        body = http_get(port)[1]
        assert body["port"] == port and body["pid"] == pids[port]
        assert pidfile(root, port).read_text().splitlines()[0] == str(pids[port])

    status = vumi.webapp_status(ENV)
    for port in ports:
        assert status[port]["running"] is True
        assert status[port]["pid"] == pids[port]
        assert status[port]["release"] == current[0]

    again = vumi.start_webapp_cluster(ENV, *map(str, ports))
    assert [r["started"] for r in again] == [False, False, False]

    restarted = vumi.restart_webapp_cluster(ENV, str(a), b, str(c))
    assert [r["port"] for r in restarted] == ports
    for r in restarted:
        assert r["old_pid"] == pids[r["port"]]
        assert r["pid"] != pids[r["port"]]
        assert not alive(pids[r["port"]])
        assert http_get(r["port"])[1]["pid"] == r["pid"]

    stopped = vumi.stop_webapp_cluster(ENV, a, b, c)
    assert [r["stopped"] for r in stopped] == [True, True, True]
    for r in restarted:
        assert not alive(r["pid"])
        assert not port_open(r["port"])
        assert not pidfile(root, r["port"]).exists()
    assert [r["stopped"] for r in vumi.stop_webapp_cluster(ENV, a, b, c)] == [False] * 3


def test_cluster_defaults_to_the_configured_ports(vumi, webapps, free_port):
    ports = [free_port() for _ in range(3)]
    webapps.extend((ENV, p) for p in ports)
    started = vumi.start_webapp_cluster(ENV, ports=ports)
    assert sorted(r["port"] for r in started) == sorted(ports)
    assert all(http_get(p)[0] == 200 for p in ports)
    status = vumi.webapp_status(ENV, ports=ports)
    assert all(status[p]["running"] for p in ports)
    stopped = vumi.stop_webapp_cluster(ENV, ports=ports)
    assert all(r["stopped"] for r in stopped)
    assert not any(port_open(p) for p in ports)


def test_cluster_accepts_a_comma_separated_string(vumi, webapps, free_port):
    ports = [free_port() for _ in range(2)]
    webapps.extend((ENV, p) for p in ports)
    started = vumi.start_webapp_cluster(ENV, ",".join(map(str, ports)))
    assert [r["port"] for r in started] == ports
    assert all(r["stopped"] for r in vumi.stop_webapp_cluster(ENV, ",".join(map(str, ports))))


# --------------------------------------------------------------------------
# failures: a crashing command, a port already taken, a stale pid file
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, expected",
    [
        ("{venv}/bin/python manage.py fail", ["exited with code 3", "failing on purpose"]),
        ("sh -c 'echo about to leave; exit 0'", ["exited with code 0", "about to leave"]),
    ],
    ids=["manage-py-fail", "exits-at-once"],
)
def test_a_command_that_exits_at_start_fails_the_job(vumi, webapps, free_port, root, command, expected):
    port = free_port()
    webapps.append((ENV, port))
    with pytest.raises(CommandExecutionError) as exc:
        vumi.start_webapp(ENV, port, webapp_command=command)
    message = str(exc.value)
    assert str(port) in message
    assert str(logfile(root, port)) in message
    for text in expected:
        assert text in message  # the log's tail is in the error
    assert not pidfile(root, port).exists()
    assert not port_open(port)
    assert vumi.webapp_status(ENV, port)[port]["running"] is False


def test_a_command_that_never_opens_the_port_is_killed(vumi, webapps, free_port, root):
    port = free_port()
    webapps.append((ENV, port))
    command = "sh -c 'echo child=$$; exec sleep 30'"
    with pytest.raises(CommandExecutionError, match="did not open the port within 1s"):
        vumi.start_webapp(ENV, port, webapp_command=command, start_timeout=1, stop_timeout=1)
    line = [x for x in logfile(root, port).read_text().splitlines() if x.startswith("child=")][-1]
    assert wait_for(lambda: not alive(int(line.split("=")[1])))
    assert not pidfile(root, port).exists()


def test_port_taken_by_a_foreign_listener(vumi, webapps, root, foreign_listener):
    port = foreign_listener.getsockname()[1]
    webapps.append((ENV, port))
    for action in (vumi.start_webapp, vumi.restart_webapp):
        with pytest.raises(CommandExecutionError) as exc:
            action(ENV, port)
        assert str(port) in str(exc.value)
        assert "in use" in str(exc.value)
        assert not pidfile(root, port).exists()
    with pytest.raises(CommandExecutionError, match=str(port)):
        vumi.start_webapp_cluster(ENV, port)
    assert vumi.stop_webapp(ENV, port)["stopped"] is False
    assert vumi.webapp_status(ENV, port)[port]["running"] is False
    assert listener_works(foreign_listener)


@pytest.mark.parametrize(
    "content",
    ["{pid}\n", "{pid}", "{pid}\n1\n{release}\n", "{pid}\n99999999\n{release}\n"],
    ids=["pid-only", "pid-no-newline", "wrong-start-time", "future-start-time"],
)
def test_stale_pid_file_of_a_foreign_process(vumi, webapps, free_port, root, current, foreign_sleep, content):
    port = free_port()
    webapps.append((ENV, port))
    pidfile(root, port).write_text(content.format(pid=foreign_sleep.pid, release=current[0]))

    assert vumi.webapp_status(ENV, port)[port]["running"] is False
    assert vumi.stop_webapp(ENV, port)["stopped"] is False
    assert foreign_sleep.poll() is None

    ret = vumi.start_webapp(ENV, port)
    assert ret["started"] is True and ret["pid"] != foreign_sleep.pid
    assert http_get(port)[1]["pid"] == ret["pid"]
    assert pidfile(root, port).read_text().splitlines()[0] == str(ret["pid"])
    assert vumi.stop_webapp(ENV, port)["stopped"] is True
    assert foreign_sleep.poll() is None  # never signalled


# --------------------------------------------------------------------------
# bad ports
# --------------------------------------------------------------------------

BAD_PORTS = [0, 65536, -1, "8000; rm", "abc", 1.5, True]


@pytest.mark.parametrize("value", BAD_PORTS, ids=repr)
@pytest.mark.parametrize(
    "call",
    [
        lambda vumi, v: vumi.start_webapp(ENV, v),
        lambda vumi, v: vumi.stop_webapp(ENV, port=v),
        lambda vumi, v: vumi.restart_webapp(ENV, v),
        lambda vumi, v: vumi.webapp_status(ENV, v),
        lambda vumi, v: vumi.start_webapp_cluster(ENV, 8000, v),
        lambda vumi, v: vumi.stop_webapp_cluster(ENV, v),
        lambda vumi, v: vumi.start_webapp_cluster(ENV, ports=[v]),
    ],
    ids=["start", "stop", "restart", "status", "start_cluster", "stop_cluster", "ports_setting"],
)
def test_bad_ports_are_rejected(vumi, root, call, value):
    before = sorted(os.listdir(root / "shared" / "tmp" / "pids"))
    with pytest.raises(SaltInvocationError) as exc:
        call(vumi, value)
    assert repr(value) in str(exc.value)
    assert "port" in str(exc.value)
    assert sorted(os.listdir(root / "shared" / "tmp" / "pids")) == before


# --------------------------------------------------------------------------
# concurrency: two jobs starting the same port at once
# --------------------------------------------------------------------------


def test_concurrent_starts_of_one_port_leave_one_tracked_webapp(vumi, webapps, free_port, root):
    port = free_port()
    webapps.append((ENV, port))
    results, errors = [], []
    barrier = threading.Barrier(2)

    def job():
        barrier.wait()
        try:
            results.append(vumi.start_webapp(ENV, port))
        except CommandExecutionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results, errors
    pids = {r["pid"] for r in results}
    assert len(pids) == 1, results
    (pid,) = pids
    # whoever serves the port is the process the pid file names: stop can reach it
    assert http_get(port)[1]["pid"] == pid
    assert pidfile(root, port).read_text().splitlines()[0] == str(pid)
    vumi.stop_webapp(ENV, port)
    assert not port_open(port)
    assert not alive(pid)


# --------------------------------------------------------------------------
# through salt-call: the webapp outlives the job that started it
# --------------------------------------------------------------------------


@pytest.fixture
def salt_call(deployed, tmp_path):
    """``salt-call --local`` with a config dir in tmp_path and the settings as minion options."""
    conf = tmp_path / "conf"
    conf.mkdir()
    state = tmp_path / "salt"
    for sub in ("srv", "pillar"):
        (state / sub).mkdir(parents=True)
    config = {
        "file_client": "local",
        "id": "vumi-webapp-test",
        "root_dir": str(state),
        "cachedir": str(state / "cache"),
        "pki_dir": str(state / "pki"),
        "log_file": str(state / "minion.log"),
        "file_roots": {"base": [str(state / "srv")]},
        "pillar_roots": {"base": [str(state / "pillar")]},
        "module_dirs": [str(REPO_ROOT / "salt" / "_modules")],
        "vumi": deployed.config,
    }
    (conf / "minion").write_text(json.dumps(config, indent=2))  # JSON is YAML
    exe = pathlib.Path(sys.executable).with_name("salt-call")
    exe = str(exe) if exe.exists() else shutil.which("salt-call")

    def run(*args):
        proc = subprocess.run(
            [exe, "--local", "-c", str(conf), "--out=json", "--retcode-passthrough", *map(str, args)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        try:
            data = json.loads(proc.stdout)["local"]
        except (ValueError, KeyError, TypeError):
            data = None
        return proc, data

    return run


def test_webapp_started_by_salt_call_outlives_it(salt_call, vumi, webapps, free_port, root, current):
    port = free_port()
    webapps.append((ENV, port))
    proc, ret = salt_call("vumi.start_webapp", ENV, port)
    assert proc.returncode == 0, proc.stderr
    assert ret["started"] is True, proc.stdout
    pid = ret["pid"]

    # salt-call has exited; its webapp still serves
    assert alive(pid)
    body = http_get(port)[1]
    assert body["pid"] == pid and body["release"] == current[0]
    assert pidfile(root, port).read_text().splitlines()[0] == str(pid)

    proc, status = salt_call("vumi.webapp_status", ENV, f"port={port}")
    assert proc.returncode == 0, proc.stderr
    assert status[str(port)]["running"] is True and status[str(port)]["pid"] == pid

    # another job finds it and stops it (not a child of this one either)
    proc, stopped = salt_call("vumi.stop_webapp", ENV, port)
    assert proc.returncode == 0, proc.stderr
    assert stopped["stopped"] is True and stopped["pid"] == pid
    assert wait_for(lambda: not alive(pid))
    assert not port_open(port)
    assert not pidfile(root, port).exists()


def test_salt_call_job_fails_on_a_taken_port(salt_call, foreign_listener):
    port = foreign_listener.getsockname()[1]
    proc, _ = salt_call("vumi.start_webapp", ENV, port)
    assert proc.returncode != 0
    assert str(port) in proc.stdout + proc.stderr
    assert listener_works(foreign_listener)
