"""
Functional tests of the webapp functions of the ``vumi`` execution module: the real
Django sample app on gunicorn, run by a real supervisord (the session's, from .venv,
with its own config and socket), on free loopback ports, asked over real HTTP.

One environment (``staging``) is deployed once for the whole file; each test names
the ports it runs (``ports=[...]``, as pillar would), and the ``webapps`` fixture has
supervisor drop every program at teardown, so the tests do not depend on each other.
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import make_repo as sample
from support import failures
from support.helpers import alive, http_get, module_env
from support.nginx import port_open
from support.supervisor import Supervisord

ENV = "staging"


# --------------------------------------------------------------------------
# Fixtures: one deployed environment for the module
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(minion_opts, origin, make_top, deploy_user, supervisord):
    """``staging`` deployed once from its own upstream clone; the module through Salt's loader."""
    with module_env(
        minion_opts, origin, make_top("webapp"), owner=deploy_user, start_timeout=20, stop_timeout=5,
        supervisor=supervisord.settings(),
    ) as env:  # fmt: skip
        env.vumi.deploy(ENV)
        yield env


@pytest.fixture
def vumi(deployed):
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
    """Start the webapp on fresh free ports (configured for the call); returns (port, result)."""

    def go(port=None, others=(), **kwargs):
        port = free_port() if port is None else port
        webapps.append((ENV, port))
        return port, vumi.start_webapp(ENV, port, ports=[port, *others], **kwargs)

    return go


# --------------------------------------------------------------------------
# Helpers: what a user of the machine would look at
# --------------------------------------------------------------------------


def logfile(root, port):
    """A webapp's log: in root's folder beside the environments, which supervisord (root) writes."""
    return root.parent / ".logs" / root.name / f"webapp.{port}.log"


def program_file(supervisor):
    return pathlib.Path(supervisor.conf_dir) / "vumi-staging.conf"


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def supervisor_info(vumi, port):
    return vumi.webapp_status(ENV, port, ports=[port])[port]


def answering_pid(port):
    """The pid of the gunicorn master serving ``port`` (its worker's parent), or None."""
    try:
        status, body = http_get(port, timeout=1)
    except OSError:
        return None
    return body["ppid"] if status == 200 else None


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


# --------------------------------------------------------------------------
# start
# --------------------------------------------------------------------------


def test_start_serves_the_current_release_under_supervisor(start, root, current, supervisor, deployed):
    port, ret = start()
    # returns only once the app answers HTTP: no retry needed
    assert ret["started"] is True and ret["port"] == port
    pid = ret["pid"]
    status, body = http_get(port)
    assert status == 200
    release, revision = current
    assert ret["release"] == release
    assert (body["env"], body["release"], body["revision"]) == (ENV, release, revision)
    assert body["settings"] == "environments.staging"
    assert body["port"] == port
    assert body["ppid"] == pid  # the process supervisor runs is gunicorn's master

    # supervisor's program, in its include folder: root's, not readable by others (it carries env)
    info = supervisor.processes()[f"vumi-staging-{port}:vumi-staging-{port}"]
    assert info["statename"] in ("STARTING", "RUNNING") and info["pid"] == pid
    path = program_file(supervisor)
    mode = path.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 0
    text = path.read_text()
    assert "[group:" not in text and f"[program:vumi-staging-{port}]" in text
    assert f"directory={root}/current/vumi" in text  # a restart picks up what is published then
    assert f"user={deployed.config.get('user', 'root')}\n" in text
    for line in ("autostart=true", "autorestart=true", "stopasgroup=true", "killasgroup=true"):
        assert line in text
    assert "gunicorn --bind 127.0.0.1:" in text  # the default command: gunicorn, not runserver
    assert "Listening at: http://127.0.0.1:%d" % port in logfile(root, port).read_text()


def test_start_twice_is_a_noop(start, vumi):
    port, first = start()
    second = vumi.start_webapp(ENV, port, ports=[port])
    assert second["started"] is False
    assert "already running" in second["comment"]
    assert second["pid"] == first["pid"] == answering_pid(port)


def test_start_accepts_port_as_keyword_and_string(vumi, webapps, free_port):
    by_keyword, as_string = free_port(), free_port()
    ports = [by_keyword, as_string]
    webapps.extend([(ENV, by_keyword), (ENV, as_string)])
    assert vumi.start_webapp(ENV, port=by_keyword, ports=ports)["port"] == by_keyword
    assert vumi.start_webapp(ENV, str(as_string), ports=ports)["port"] == as_string
    for port in ports:
        assert http_get(port)[1]["port"] == port
    assert vumi.webapp_status(ENV, port=str(as_string), ports=ports)[as_string]["running"] is True
    assert vumi.restart_webapp(ENV, port=by_keyword, ports=ports)["started"] is True
    assert vumi.stop_webapp(ENV, port=str(as_string), ports=ports)["stopped"] is True
    assert vumi.stop_webapp(ENV, port=by_keyword, ports=ports)["stopped"] is True
    assert not port_open(by_keyword) and not port_open(as_string)


def test_start_without_a_release_fails_clearly_and_writes_nothing(vumi, free_port, supervisor):
    port = free_port()
    with pytest.raises(CommandExecutionError, match="no current release"):
        vumi.start_webapp("production", port, ports=[port])
    assert list(pathlib.Path(supervisor.conf_dir).glob("*.conf")) == []
    assert not port_open(port)


@pytest.mark.parametrize("action", ["stop_webapp", "restart_webapp"])
def test_a_port_that_does_not_run_is_refused(vumi, free_port, supervisor, action):
    configured, other = free_port(), free_port()
    with pytest.raises(SaltInvocationError) as exc:
        getattr(vumi, action)(ENV, other, ports=[configured])
    assert f"port {other} does not run for staging" in str(exc.value)
    assert str(configured) in str(exc.value)
    assert not port_open(other)
    assert list(pathlib.Path(supervisor.conf_dir).glob("*.conf")) == []  # no program written, none started


def test_any_port_starts_as_in_the_seed_and_is_kept_until_stopped(start, vumi, deployed, free_port, supervisor):
    port, _ = start()
    pillar = {"ports": [port]}
    other, dropped = free_port(), free_port()
    # fab start_webapp:staging,port=<any>: a port pillar does not list
    ret = vumi.start_webapp(ENV, other, **pillar)
    assert ret["started"] is True and http_get(other)[0] == 200
    status = vumi.webapp_status(ENV, **pillar)
    assert status[other]["running"] and status[other]["extra"] and not status[other]["configured"], status

    # the state (what state.apply runs) neither stops it nor forgets it, and says so
    state = deployed.loaders.states.vumi.webapp_running(ENV, ports=[port])
    assert state.result is True and f"ports {other} run too" in state.comment, state.raw
    assert http_get(other)[0] == 200 and vumi.webapp_status(ENV, other, **pillar)[other]["pid"] == ret["pid"]

    # restarted and stopped by hand; stopped, it is forgotten
    restarted = vumi.restart_webapp(ENV, other, **pillar)
    assert restarted["old_pid"] == ret["pid"] and restarted["pid"] != ret["pid"] and http_get(other)[0] == 200
    assert vumi.stop_webapp(ENV, other, **pillar)["stopped"] is True
    assert not port_open(other) and other not in vumi.webapp_status(ENV, **pillar)
    assert f"vumi-staging-{other}]" not in program_file(supervisor).read_text()

    # a port an earlier run configured (pillar= override) and pillar no longer lists: still ours to control
    vumi.start_webapp(ENV, dropped, ports=[port, dropped])
    assert vumi.webapp_status(ENV, **pillar)[dropped]["running"] is True
    again = vumi.restart_webapp(ENV, dropped, **pillar)
    assert again["started"] is True and http_get(dropped)[0] == 200
    assert vumi.stop_webapp(ENV, dropped, **pillar)["stopped"] is True and not port_open(dropped)


def test_a_port_another_process_holds_is_refused_by_start(vumi, foreign_listener, supervisor, start):
    port, _ = start()
    taken = foreign_listener.getsockname()[1]
    with pytest.raises(
        CommandExecutionError, match=rf"port {taken} on 127.0.0.1 is already in use by pid {os.getpid()} \("
    ):
        vumi.start_webapp(ENV, taken, ports=[port])
    assert f"vumi-staging-{taken}]" not in program_file(supervisor).read_text()


def test_a_host_on_the_older_one_group_layout_moves_over_port_by_port(start, vumi, supervisor, free_port):
    first, _ = start()
    second = free_port()
    ports = [first, second]
    vumi.start_webapp(ENV, second, ports=ports)
    # the layout before each program had its own group: one [group:] of every port
    text = program_file(supervisor).read_text()
    names = ",".join(f"vumi-staging-{p}" for p in ports)
    head, rest = text.split("\n", 1)
    program_file(supervisor).write_text(f"{head}\n[group:vumi-staging]\nprograms={names}\n{rest}")
    rpc = supervisor.rpc().supervisor
    for port in ports:
        rpc.stopProcessGroup(f"vumi-staging-{port}", True)
        rpc.removeProcessGroup(f"vumi-staging-{port}")
    rpc.reloadConfig()
    rpc.addProcessGroup("vumi-staging")
    assert wait_for(lambda: all(answering_pid(p) for p in ports), 30)
    old = {p: supervisor.processes()[f"vumi-staging:vumi-staging-{p}"]["pid"] for p in ports}

    # a move that fails at the first port puts it back in the old group; the second never stopped
    broken = vumi.settings(ENV)["webapp_command"] + " --bogus-flag"
    with pytest.raises(CommandExecutionError, match=f"stopped at vumi-staging-{first}"):
        vumi.webapp_programs(ENV, ports=ports, webapp_command=broken)
    assert "[group:vumi-staging]" in program_file(supervisor).read_text()
    assert wait_for(lambda: answering_pid(first) is not None, 30) and answering_pid(second) == old[second]
    old = {p: supervisor.processes()[f"vumi-staging:vumi-staging-{p}"]["pid"] for p in ports}

    ret = vumi.webapp_programs(ENV, ports=ports)
    assert ret["programs"] == [f"vumi-staging-{p}" for p in ports] + ["vumi-staging"], ret
    found = supervisor.processes()
    assert not [name for name in found if name.startswith("vumi-staging:")], found  # the old group is gone
    for port in ports:
        assert found[f"vumi-staging-{port}:vumi-staging-{port}"]["statename"] in ("STARTING", "RUNNING")
        assert answering_pid(port) not in (None, old[port])
    assert "[group:" not in program_file(supervisor).read_text()
    assert vumi.webapp_programs(ENV, ports=ports)["programs"] == []  # and it stays so


# --------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------


def test_status_reports_supervisor_state_pid_release_and_http(start, vumi, free_port, current):
    idle = free_port()
    port, ret = start(others=[idle])
    ports = [port, idle]
    assert vumi.stop_webapp(ENV, idle, ports=ports)["stopped"] is True  # both were started (autostart)
    status = vumi.webapp_status(ENV, ports=ports)
    assert set(status) == {port, idle}
    running = status[port]
    assert running["state"] in ("STARTING", "RUNNING")
    assert running["running"] is True and running["pid"] == ret["pid"]
    assert running["release"] == current[0] and running["current"] is True
    assert running["listening"] is True and running["answers"] is True
    assert isinstance(running["uptime"], int) and 0 <= running["uptime"] < 120
    assert status[idle]["state"] == "STOPPED"
    assert status[idle]["running"] is False and status[idle]["pid"] is None
    assert status[idle]["answers"] is False
    assert vumi.webapp_status(ENV, port, ports=ports)[port]["pid"] == ret["pid"]
    json.dumps(status)  # plain data a user reads


def test_a_killed_webapp_comes_back_with_no_salt_run(start, vumi):
    # how fast is bench/restart_downtime.py's to measure (kill -9 to answering, median); here: that it does
    port, ret = start()
    os.kill(ret["pid"], signal.SIGKILL)  # gunicorn's master: the process supervisor runs
    killed = time.monotonic()

    def served_by_a_new_master():
        info = supervisor_info(vumi, port)
        return info["pid"] not in (None, ret["pid"]) and answering_pid(port) == info["pid"]

    # its orphaned workers notice their master is gone and leave; the new master binds
    assert wait_for(served_by_a_new_master, timeout=60), "port not back within 60 s"
    print(f"kill -9 to answering again: {time.monotonic() - killed:.2f}s")
    assert supervisor_info(vumi, port)["running"] is True


def test_supervisord_restart_brings_every_configured_port_back(vumi, free_port, tmp_path):
    """A reboot, as far as these machines allow: supervisord stopped, then started again."""
    own = Supervisord()
    try:
        own.start()
        ports = [free_port(), free_port()]
        kwargs = {"ports": ports, "supervisor": own.settings()}
        vumi.start_webapp_cluster(ENV, **kwargs)
        assert all(answering_pid(p) for p in ports)
        own.stop()
        assert wait_for(lambda: not any(port_open(p) for p in ports))
        own.start()
        assert wait_for(lambda: all(answering_pid(p) for p in ports), timeout=20)
        status = vumi.webapp_status(ENV, **kwargs)
        assert all(status[p]["running"] and status[p]["answers"] for p in ports), status
    finally:
        own.remove()


def test_the_log_is_written_in_roots_folder_and_a_link_planted_in_its_place_changes_nothing(start, root, tmp_path):
    """
    supervisord (root) writes the log: not in the user's tree, where the user could swap
    ``shared/logs/webapp.<port>.log`` for a link to any file between a check and root's open.
    """
    victim = tmp_path / "victim"
    victim.write_text("root's own\n")
    port, _ = start()
    link = root / "shared" / "logs" / f"webapp.{port}.log"
    assert link.is_symlink() and link.resolve() == logfile(root, port)
    assert "Listening at" in link.read_text()  # the user reads it through the link
    folder = logfile(root, port).parent
    assert (folder.stat().st_uid, stat.S_IMODE(folder.stat().st_mode)) == (0, 0o750)
    link.unlink()
    link.symlink_to(victim)  # what a deploy user could do at any moment
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/noise?kb=4&marker=after-the-swap", timeout=10):
        pass
    assert wait_for(lambda: "after-the-swap" in logfile(root, port).read_text(), timeout=5)
    assert victim.read_text() == "root's own\n"


def test_log_rotation_keeps_the_process_writing_to_the_new_file(start, root):
    port, _ = start(supervisor={"log_max_bytes": 1024 * 1024, "log_backups": 2})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/noise?kb=2048&marker=before", timeout=10):
        pass
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/noise?kb=1&marker=after-rotation", timeout=10):
        pass
    log, rotated = logfile(root, port), logfile(root, port).with_name(f"webapp.{port}.log.1")
    assert wait_for(lambda: "after-rotation" in log.read_text(), timeout=5)
    assert rotated.is_file()
    assert any("before xxx" in p.read_text() for p in log.parent.glob(f"webapp.{port}.log.*"))
    assert log.stat().st_size < 1024 * 1024


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
    before = vumi.webapp_status(ENV, port, ports=[port])[port]
    assert (before["pid"], before["release"], before["current"]) == (ret["pid"], old_release, False)
    assert http_get(port)[1]["revision"] == old_revision

    restarted = vumi.restart_webapp(ENV, port, ports=[port])
    assert restarted["started"] is True
    assert restarted["release"] == new["release"]
    assert (restarted["old_pid"], restarted["old_release"]) == (ret["pid"], old_release)
    assert restarted["pid"] != ret["pid"]
    assert not alive(ret["pid"])
    body = http_get(port)[1]
    assert (body["release"], body["revision"], body["ppid"]) == (new["release"], sha, restarted["pid"])
    assert vumi.webapp_status(ENV, port, ports=[port])[port]["current"] is True


def test_restart_of_a_stopped_port_starts_it(vumi, webapps, free_port):
    port = free_port()
    webapps.append((ENV, port))
    ret = vumi.restart_webapp(ENV, port, ports=[port])
    assert ret["started"] is True
    assert answering_pid(port) == ret["pid"]


def test_a_bad_command_field_is_refused_before_the_running_process_stops(start, vumi):
    port, ret = start()
    with pytest.raises(SaltInvocationError, match=r"\{nosuchfield\}|nosuchfield"):
        vumi.restart_webapp(ENV, port, ports=[port], webapp_command="{venv}/bin/gunicorn {nosuchfield}")
    assert answering_pid(port) == ret["pid"]  # still the same process, serving


# --------------------------------------------------------------------------
# stop
# --------------------------------------------------------------------------


def test_stop_then_stop_again(start, vumi):
    port, ret = start()
    first = vumi.stop_webapp(ENV, port, ports=[port])
    assert first["stopped"] is True and first["pid"] == ret["pid"]
    assert not alive(ret["pid"]) and not port_open(port)
    second = vumi.stop_webapp(ENV, port, ports=[port])
    assert second["stopped"] is False and "not running" in second["comment"]


def test_stop_kills_a_webapp_that_ignores_sigterm(start, vumi):
    command = "sh -c 'trap \"\" TERM; exec {venv}/bin/python -m http.server --bind {host} {port}'"
    port, ret = start(webapp_command=command, stop_timeout=1)
    began = time.monotonic()
    assert vumi.stop_webapp(ENV, port, ports=[port], webapp_command=command, stop_timeout=1)["stopped"] is True
    # SIGKILL after stop_timeout (1 s), not a wait for the process that never leaves
    assert time.monotonic() - began < 30
    assert not alive(ret["pid"]) and not port_open(port)


# --------------------------------------------------------------------------
# several ports
# --------------------------------------------------------------------------


def test_cluster_start_status_restart_stop(vumi, webapps, free_port, current):
    ports = [free_port(), free_port(), free_port()]
    webapps.extend((ENV, p) for p in ports)
    started = vumi.start_webapp_cluster(ENV, *ports, ports=ports)
    assert [r["port"] for r in started] == ports
    pids = {r["port"]: r["pid"] for r in started}
    assert all(answering_pid(p) == pids[p] for p in ports)
    restarted = vumi.restart_webapp_cluster(ENV, ports=ports)
    assert [r["port"] for r in restarted] == ports
    assert all(r["old_pid"] == pids[r["port"]] and r["pid"] != pids[r["port"]] for r in restarted)
    assert all(r["release"] == current[0] for r in restarted)
    stopped = vumi.stop_webapp_cluster(ENV, ",".join(map(str, ports)), ports=ports)
    assert [r["stopped"] for r in stopped] == [True, True, True]
    assert not any(port_open(p) for p in ports)


def test_a_cluster_with_an_unconfigured_port_touches_none(start, vumi, free_port):
    port, ret = start()
    stray = free_port()
    with pytest.raises(SaltInvocationError, match=f"port {stray} does not run for staging"):
        vumi.restart_webapp_cluster(ENV, port, stray, ports=[port])
    assert answering_pid(port) == ret["pid"]


# --------------------------------------------------------------------------
# failures: a crashing command, a port already taken, supervisord away
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, expected",
    [
        ("{venv}/bin/python manage.py fail", "failing on purpose"),
        ("sh -c 'echo about to leave; exit 0'", "about to leave"),
    ],
    ids=["manage-py-fail", "exits-at-once"],
)
def test_a_command_that_exits_at_start_is_fatal_with_its_log(vumi, webapps, free_port, root, command, expected):
    port = free_port()
    webapps.append((ENV, port))
    kwargs = {"ports": [port], "webapp_command": command, "supervisor": {"start_retries": 1}}
    with pytest.raises(CommandExecutionError) as exc:
        vumi.start_webapp(ENV, port, **kwargs)
    message = str(exc.value)
    assert f"port {port}" in message and "FATAL" in message
    assert str(logfile(root, port)) in message
    assert expected in message  # the log's tail is in the error
    assert vumi.webapp_status(ENV, port, **kwargs)[port]["state"] == "FATAL"
    assert not port_open(port)


def test_a_command_that_never_answers_fails_and_is_stopped(vumi, webapps, free_port):
    port = free_port()
    webapps.append((ENV, port))
    kwargs = {"ports": [port], "webapp_command": "sh -c 'exec sleep 30'", "start_timeout": 2, "stop_timeout": 1}
    with pytest.raises(CommandExecutionError, match="did not answer HTTP within 2s"):
        vumi.start_webapp(ENV, port, **kwargs)
    assert vumi.webapp_status(ENV, port, **kwargs)[port]["running"] is False


def test_port_taken_by_a_foreign_listener(vumi, webapps, foreign_listener):
    port = foreign_listener.getsockname()[1]
    webapps.append((ENV, port))
    for action in (vumi.start_webapp, vumi.restart_webapp):
        with pytest.raises(CommandExecutionError) as exc:
            action(ENV, port, ports=[port])
        assert f"port {port}" in str(exc.value) and "in use" in str(exc.value)
    assert vumi.webapp_status(ENV, port, ports=[port])[port]["running"] is False
    foreign_listener.settimeout(2)
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        assert foreign_listener.accept()  # still ours, still listening


def test_a_forged_pid_file_changes_nothing_and_signals_nobody(start, vumi, root, foreign_sleep):
    port, ret = start()
    pids = root / "shared" / "tmp" / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    with open(f"/proc/{foreign_sleep.pid}/stat", encoding="utf-8") as fh:
        started = fh.read().rsplit(")", 1)[1].split()[19]
    for name in (f"webapp.{port}.pid", f"webapp.health.{port}.pid"):
        (pids / name).write_text(f"{foreign_sleep.pid}\n{started}\n{vumi.current(ENV)['release']}\n")
    status = vumi.webapp_status(ENV, port, ports=[port])[port]
    assert status["pid"] == ret["pid"] != foreign_sleep.pid
    assert vumi.restart_webapp(ENV, port, ports=[port])["old_pid"] == ret["pid"]
    assert vumi.stop_webapp(ENV, port, ports=[port])["stopped"] is True
    vumi.deploy(ENV, health_check=True)  # a deploy's recovery and health check too
    assert foreign_sleep.poll() is None  # never signalled


def test_supervisord_not_running_is_a_clear_error_and_writes_nothing(vumi, free_port, tmp_path):
    away = Supervisord()  # configured, never started: no socket
    try:
        port = free_port()
        with pytest.raises(CommandExecutionError) as exc:
            vumi.start_webapp(ENV, port, ports=[port], supervisor=away.settings())
        assert "supervisord is not reachable" in str(exc.value) and str(away.conf_file) in str(exc.value)
        assert list(away.conf_dir.glob("*.conf")) == []
    finally:
        away.remove()


def test_a_missing_conf_dir_is_a_clear_error(vumi, free_port, supervisor, tmp_path):
    port = free_port()
    settings = dict(supervisor.settings(), conf_dir=str(tmp_path / "no-such-dir"))
    with pytest.raises(CommandExecutionError, match="conf_dir .*no-such-dir does not exist"):
        vumi.start_webapp(ENV, port, ports=[port], supervisor=settings)
    assert not port_open(port)


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
def test_bad_ports_are_rejected(vumi, supervisor, call, value):
    with pytest.raises(SaltInvocationError) as exc:
        call(vumi, value)
    assert repr(value) in str(exc.value)
    assert "port" in str(exc.value)
    assert list(pathlib.Path(supervisor.conf_dir).glob("*.conf")) == []


# --------------------------------------------------------------------------
# concurrency: two jobs starting the same port at once
# --------------------------------------------------------------------------


def test_concurrent_starts_of_one_port_leave_one_webapp(vumi, webapps, free_port, supervisor):
    port = free_port()
    webapps.append((ENV, port))
    results, errors = [], []
    barrier = threading.Barrier(2)

    def job():
        barrier.wait()
        try:
            results.append(vumi.start_webapp(ENV, port, ports=[port]))
        except CommandExecutionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results, errors
    assert len({r["pid"] for r in results}) == 1, results
    assert answering_pid(port) == results[0]["pid"]
    assert [n for n in supervisor.processes() if n.startswith("vumi-staging-")] == [
        f"vumi-staging-{port}:vumi-staging-{port}"
    ]


# --------------------------------------------------------------------------
# through salt-call: another job finds and stops what one job started
# --------------------------------------------------------------------------


@pytest.fixture
def salt_call(deployed, tmp_path):
    """``salt-call --local`` with a config dir in tmp_path and the settings as minion options."""
    conf = failures.salt_call_config(tmp_path / "call", deployed.config)
    exe = pathlib.Path(sys.executable).with_name("salt-call")
    exe = str(exe) if exe.exists() else shutil.which("salt-call")

    def run(*args):
        proc = subprocess.run(
            [exe, "--local", "-c", str(conf), "--out=json", "--retcode-passthrough", *map(str, args)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        try:
            data = json.loads(proc.stdout)["local"]
        except (ValueError, KeyError, TypeError):
            data = None
        return proc, data

    return run


def test_webapp_started_by_salt_call_is_found_and_stopped_by_another(salt_call, webapps, free_port, current):
    port = free_port()
    webapps.append((ENV, port))
    proc, ret = salt_call("vumi.start_webapp", ENV, port, f"ports=[{port}]")
    assert proc.returncode == 0, proc.stderr
    assert ret["started"] is True, proc.stdout
    pid = ret["pid"]
    assert http_get(port)[1]["release"] == current[0] and answering_pid(port) == pid

    proc, status = salt_call("vumi.webapp_status", ENV, f"port={port}", f"ports=[{port}]")
    assert proc.returncode == 0, proc.stderr
    assert status[str(port)]["running"] is True and status[str(port)]["pid"] == pid

    proc, stopped = salt_call("vumi.stop_webapp", ENV, port, f"ports=[{port}]")
    assert proc.returncode == 0, proc.stderr
    assert stopped["stopped"] is True and stopped["pid"] == pid
    assert not alive(pid) and not port_open(port)


def test_salt_call_job_fails_on_a_port_that_does_not_run(salt_call, free_port):
    port = free_port()
    proc, _ = salt_call("vumi.stop_webapp", ENV, port)
    assert proc.returncode != 0
    assert f"port {port} does not run for staging" in proc.stdout + proc.stderr
    assert not port_open(port)
