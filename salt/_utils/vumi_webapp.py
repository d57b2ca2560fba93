"""
Webapp processes: one per port, started as the deploy user, tracked by a pid file with the
process's start time; rolling restarts over several ports.
"""

import contextlib
import logging
import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_environment
import vumi_files
import vumi_history
import vumi_releases
import vumi_settings

log = logging.getLogger(__name__)


def proc_start_time(pid):
    """The process's start time in clock ticks since boot, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # zombie or dead: exited
        return None
    return fields[19]


def read_pidfile(paths, port):
    try:
        with open(paths.pidfile(port), encoding="utf-8") as fh:
            lines = fh.read().split()
        return {"pid": int(lines[0]), "started": lines[1], "release": lines[2]}
    except (OSError, ValueError, IndexError):
        return None


def ours(paths, port):
    """The pid file's process if it is still the one we started; else drop the stale pid file."""
    info = read_pidfile(paths, port)
    if info is None:
        if os.path.lexists(paths.pidfile(port)):
            os.remove(paths.pidfile(port))
        return None
    if proc_start_time(info["pid"]) != info["started"]:
        log.info("removing stale pid file %s (pid %s)", paths.pidfile(port), info["pid"])
        os.remove(paths.pidfile(port))
        return None
    return info


def port_open(host, port, timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def webapp_command(cfg, paths, name, port, pidfile=None, logfile=None):
    fields = {
        "port": port,
        "host": cfg["host"],
        "pidfile": pidfile or paths.pidfile(port),
        "logfile": logfile or paths.logfile(port),
        "settings": vumi_settings.settings_module(cfg),
        "env": cfg["environment"],
        "branch": cfg["branch"],
        "release": name,
        "release_path": paths.release(name),
        "code": paths.code(name),
        "venv": paths.venv(name),
        "current": paths.current,
    }
    quoted = {k: shlex.quote(str(v)) for k, v in fields.items()}
    try:
        return cfg["webapp_command"].format(**quoted)
    except (KeyError, IndexError, ValueError) as exc:
        raise SaltInvocationError(f"invalid webapp_command {cfg['webapp_command']!r}: {exc}") from None


def reap(pid):
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_dead(pid, started, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap(pid)
        if proc_start_time(pid) != started:
            return True
        time.sleep(0.02)
    return False


def start(cfg, paths, port):
    name = vumi_releases.current_release(paths)
    if name is None:
        raise CommandExecutionError(f"{cfg['environment']} has no current release; deploy first")
    running = ours(paths, port)
    if running:
        return {"port": port, "pid": running["pid"], "release": running["release"],
                "started": False, "comment": f"webapp already running on port {port}"}  # fmt: skip
    if port_open(cfg["host"], port):
        raise CommandExecutionError(f"port {port} on {cfg['host']} is already in use by another process")
    proc = spawn(cfg, paths, name, port, paths.pidfile(port), paths.logfile(port))
    return {"port": port, "pid": proc.pid, "release": name, "started": True,
            "comment": f"webapp started on port {port}"}  # fmt: skip


def spawn(cfg, paths, name, port, pidfile, logfile):
    """
    Start release ``name``'s webapp on ``port`` (its own process group, as
    ``user``), record it in ``pidfile``, and return the process once the port
    accepts connections; raise with the log's tail if it exits or never listens.
    """
    runas = vumi_files.runas_user(cfg)
    for folder in (paths.logs, paths.pids):
        vumi_files.makedirs(folder, runas)
    env = vumi_environment.for_release(cfg, paths, name, VUMI_PORT=port)
    command = webapp_command(cfg, paths, name, port, pidfile, logfile)
    user = pwd.getpwnam(runas) if runas else None
    try:  # O_NOFOLLOW: root must not append to wherever a link planted as the log points
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    except OSError as exc:
        raise CommandExecutionError(f"cannot open the webapp's log {logfile}: {exc}") from None
    with open(fd, "ab") as logfh:
        os.fchmod(logfh.fileno(), 0o640)  # the webapp's log may tell secrets: not for every user
        vumi_files.chown(logfile, runas)
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            ["/bin/sh", "-c", "exec " + command],
            cwd=os.path.realpath(paths.code(name)),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logfh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the Salt job; its own process group
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            # the user's own groups, not root's: Popen would keep the caller's otherwise
            extra_groups=os.getgrouplist(user.pw_name, user.pw_gid) if user else None,
        )
    started = proc_start_time(proc.pid)
    vumi_files.write_atomic(pidfile, f"{proc.pid}\n{started}\n{name}\n", runas)
    deadline = time.monotonic() + cfg["start_timeout"]
    while True:
        if proc.poll() is not None:
            problem = f"exited with code {proc.returncode}"
            break
        if port_open(cfg["host"], port):
            return proc
        if time.monotonic() >= deadline:
            signal_group(proc.pid, started, cfg["stop_timeout"], cfg["stop_signal"])
            problem = f"did not open the port within {cfg['start_timeout']:g}s"
            break
        time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        os.remove(pidfile)
    raise CommandExecutionError(f"webapp on port {port} {problem}; last lines of {logfile}:\n{vumi_files.file_tail(logfile)}")


def signal_group(pid, started, grace, sig="SIGTERM"):
    """
    Send ``sig`` to the process group, SIGKILL it after ``grace`` seconds (its
    requests in flight get that long to finish); True if it had to be killed.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.Signals[sig])
    if wait_dead(pid, started, grace):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    wait_dead(pid, started, 5)
    return True


def stop(cfg, paths, port):
    running = ours(paths, port)
    if running is None:
        return {"port": port, "stopped": False, "comment": f"webapp not running on port {port}"}
    # re-checked right before signalling: the pid still is the process we started
    if proc_start_time(running["pid"]) == running["started"]:
        killed = signal_group(running["pid"], running["started"], cfg["stop_timeout"], cfg["stop_signal"])
    else:
        killed = False
    with contextlib.suppress(FileNotFoundError):
        os.remove(paths.pidfile(port))
    return {"port": port, "pid": running["pid"], "release": running["release"], "stopped": True,
            "killed": killed, "comment": f"webapp stopped on port {port}"}  # fmt: skip


def restart(cfg, paths, port):
    stopped = stop(cfg, paths, port)
    started = start(cfg, paths, port)
    return dict(started, old_pid=stopped.get("pid"), old_release=stopped.get("release"),
                comment=f"webapp restarted on port {port}")  # fmt: skip


@contextlib.contextmanager
def port_lock(cfg, paths, port):
    """
    One start, stop or restart of a port at a time, across Salt jobs: without it two
    jobs starting one port both find it free, the loser's process exits on the taken
    port while its pid file replaces the winner's, and the running webapp can no
    longer be stopped.
    """
    if not os.path.isdir(paths.root):
        yield  # nothing deployed, nothing running: the action says so
        return
    vumi_files.refuse_links(paths)
    vumi_files.makedirs(paths.pids, vumi_files.runas_user(cfg))  # the webapp may write its own pid file there
    with vumi_history.flock(
        os.path.join(paths.pids, f"webapp.{port}.lock"),
        cfg["start_timeout"] + 2 * cfg["stop_timeout"] + 10,
        lambda holder: CommandExecutionError(
            f"another job is still starting or stopping the webapp on port {port}: {holder}"
        ),
    ):
        yield


def locked(action, cfg, paths, port):
    with port_lock(cfg, paths, port):
        return action(cfg, paths, port)


CLUSTER_VERBS = {"start": "started", "stop": "stopped", "restart": "restarted"}


def cluster(action, cfg, paths, ports):
    ports = vumi_settings.parse_ports(ports) or cfg["ports"]
    done = []
    # One port at a time, each serving again before the next one stops. The first
    # failure stops the roll: the ports after it keep running what they ran.
    for index, port in enumerate(ports):
        try:
            done.append(locked(action, cfg, paths, port))
        except CommandExecutionError as exc:
            verb = CLUSTER_VERBS.get(action.__name__, "handled")
            left = ports[index + 1 :]
            raise CommandExecutionError(
                f"{exc}\nstopped at port {port}: {verb} "
                f"{', '.join(str(r['port']) for r in done) or 'none'}; "
                f"left as they were: {', '.join(map(str, left)) or 'none'}",
                info={"port": port, "done": done, "left": left},
            ) from None
    return done


def status(cfg, paths, port=None):
    """Per port: running, pid, release, whether it is current, uptime, listening; see ``vumi.webapp_status``."""
    if port is not None:
        ports = [vumi_settings.parse_port(port)]
    else:
        found = []
        if os.path.isdir(paths.pids):
            for name in os.listdir(paths.pids):
                match = re.match(r"^webapp\.(\d+)\.pid$", name)
                if match:
                    found.append(int(match.group(1)))
        ports = sorted(set(cfg["ports"]) | set(found))
    current_name = vumi_releases.current_release_safe(paths)
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime", encoding="utf-8") as fh:
        boot_uptime = float(fh.read().split()[0])
    result = {}
    for p in ports:
        info = ours(paths, p)
        if info is None:
            result[p] = {"running": False, "pid": None, "release": None, "current": False,
                         "uptime": None, "listening": False}  # fmt: skip
            continue
        result[p] = {
            "running": True,
            "pid": info["pid"],
            "release": info["release"],
            "current": info["release"] == current_name,
            "uptime": round(boot_uptime - int(info["started"]) / ticks, 1),
            "listening": port_open(cfg["host"], p),
        }
    return result
