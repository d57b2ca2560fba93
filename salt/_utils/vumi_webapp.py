"""
Webapps: one supervisord program per configured port (``vumi_supervisor``), controlled
through supervisor; rolling restarts over several ports; the command-line template.

A start or restart returns when the process answers HTTP (the health probe's rule:
gunicorn opens its port before the app has loaded). Nothing here reads a pid file or
signals a process: supervisor starts, stops and restarts, and says which pid runs.
"""

import contextlib
import ctypes
import os
import pwd
import shlex
import signal
import socket
import struct
import subprocess
import time

from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_environment
import vumi_errors
import vumi_files
import vumi_lock
import vumi_manifest
import vumi_privileges
import vumi_probes
import vumi_settings
import vumi_supervisor


def _kernel_hex(packed):
    """An address as /proc/net/tcp{,6} write it: 32-bit words in host byte order, in hex."""
    return "".join(f"{word:08X}" for word in struct.unpack(f"={len(packed) // 4}I", packed))


def listening(host, port):
    """
    Whether a socket listens on ``host:port`` (or on every address, which takes it
    too), from the kernel's tables: no connection is made, so a foreign listener's
    backlog is not filled by asking.
    """
    try:
        v4 = socket.inet_aton(socket.gethostbyname(host))
    except OSError:
        v4 = None
    taken = {
        "/proc/net/tcp": {_kernel_hex(bytes(4))} | ({_kernel_hex(v4)} if v4 else set()),
        "/proc/net/tcp6": {_kernel_hex(bytes(16))} | ({_kernel_hex(bytes(10) + b"\xff\xff" + v4)} if v4 else set()),
    }
    for table, addresses in taken.items():
        try:
            with open(table, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()  # sl local_address rem_address st ...
                    if len(fields) > 3 and fields[3] == "0A":
                        address, _, hexport = fields[1].partition(":")
                        if int(hexport, 16) == port and address in addresses:
                            return True
        except OSError:
            continue
    return False


def port_taken(cfg, port, grace=3.0):
    """
    Whether another process holds ``port``: still listening after ``grace`` seconds
    (a stopped gunicorn's workers let go of it a moment after supervisor saw their
    master exit).
    """
    deadline = time.monotonic() + grace
    while listening(cfg["host"], port):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)
    return False


def wsgi_module(cfg, code):
    """
    ``{wsgi}`` of the command line: ``wsgi_module``, else the one package beside
    ``manage.py`` that has a ``wsgi.py`` (a ``django-admin startproject`` site's).
    """
    if cfg["wsgi_module"]:
        return cfg["wsgi_module"]
    try:
        found = sorted(
            entry.name for entry in os.scandir(code)
            if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "wsgi.py"))
        )  # fmt: skip
    except OSError:
        found = []
    if len(found) != 1:
        raise SaltInvocationError(
            f"webapp_command uses {{wsgi}}, but the code folder has {len(found) or 'no'} package(s) with a "
            f"wsgi.py{': ' + ', '.join(found) if found else ''}; set wsgi_module (e.g. mysite.wsgi)"
        )
    return f"{found[0]}.wsgi"


def webapp_command(cfg, paths, name, port, logfile=None, supervised=False):
    """
    The command line of release ``name``'s webapp on ``port``; ``supervised``: the
    program's, whose paths go through ``current`` (it runs whatever is published when it starts).
    """
    code = paths.current_code() if supervised else paths.code(name)
    fields = {
        "port": port,
        "host": cfg["host"],
        "pidfile": paths.pidfile(port),  # for a command that insists on one: never read here
        "logfile": logfile or paths.logfile(port),
        "settings": vumi_settings.settings_module(cfg),
        "env": cfg["environment"],
        "branch": cfg["branch"],
        "code": code,
        "venv": paths.current_venv() if supervised else paths.venv(name),
        "current": paths.current,
    }
    template = cfg["webapp_command"]
    if "{wsgi}" in template:
        fields["wsgi"] = wsgi_module(cfg, paths.code(name))
    quoted = {k: shlex.quote(str(v)) for k, v in fields.items()}
    try:
        return template.format(**quoted)
    except (KeyError, IndexError, ValueError) as exc:
        what = f"{{{exc.args[0]}}} is not a field" if isinstance(exc, KeyError) else str(exc)
        raise SaltInvocationError(
            f"invalid webapp_command {template!r}: {what} (use {', '.join('{' + f + '}' for f in sorted(fields))})"
        ) from None


def _current(cfg, paths):
    name = vumi_manifest.current_release(paths)
    if name is None or not os.path.isdir(paths.code(name)):
        raise CommandExecutionError(f"{cfg['environment']} has no current release; deploy first")
    return name


def _configured(cfg, port):
    if port not in cfg["ports"]:
        raise SaltInvocationError(
            f"port {port} is not configured for {cfg['environment']} (ports: "
            f"{', '.join(map(str, cfg['ports'])) or 'none'}); add it to pillar ports first"
        )


def programs(cfg, paths, test=False):
    """Write the environment's supervisor programs (every configured port) and load them; True if changed."""
    name = _current(cfg, paths)
    text = vumi_supervisor.render_programs(
        cfg, paths, lambda port: webapp_command(cfg, paths, name, port, supervised=True)
    )
    if not os.path.isdir(paths.logs) or os.path.islink(paths.logs):
        raise CommandExecutionError(f"{paths.logs} is not a folder: run vumi.layout {cfg['environment']} first")
    # a port another process holds would crash-loop under supervisor: refused before the file says it
    sup = vumi_supervisor.Supervisor(cfg)
    for port in cfg["ports"]:
        info = sup.info(vumi_supervisor.full_name(cfg, port))
        if (info is None or info["statename"] not in vumi_supervisor.UP + ("BACKOFF",)) and port_taken(cfg, port):
            raise CommandExecutionError(f"port {port} on {cfg['host']} is already in use by another process")
    if not test:
        vumi_privileges.ensure_log_dir(cfg, paths)  # root's folder: supervisord writes there
        if not all(os.path.lexists(paths.log_link(port)) for port in cfg["ports"]):
            vumi_privileges.as_user(cfg, None, None, vumi_supervisor.webapp_logs, cfg, paths)
    return vumi_supervisor.write_programs(cfg, paths, text, test=test, sup=sup)


def _release_of(paths, pid):
    """The release a process runs, from its working directory (the kernel's word, not a file's)."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None
    rel = os.path.relpath(cwd, paths.releases)
    first = rel.split(os.sep, 1)[0]
    return first if not rel.startswith("..") and vumi_settings.RELEASE_RE.match(first) else None


def _answered(cfg, sup, name, port, logfile, deadline):
    """Wait until the program answers HTTP; raise with supervisor's state and the log's tail if it does not."""
    while True:
        info = sup.info(name)
        state = info["statename"] if info else "GONE"
        # answering while STARTING counts: startsecs is supervisor's crash-loop guard, not readiness
        if state in vumi_supervisor.UP and vumi_probes.answers(cfg["host"], port, timeout=1):
            return info
        if state in ("FATAL", "STOPPED", "GONE"):  # EXITED, BACKOFF: supervisor starts it again
            problem = f"is {state} in supervisor ({(info or {}).get('spawnerr') or 'exited'})"
            break
        if time.monotonic() >= deadline:
            problem = f"did not answer HTTP within {cfg['start_timeout']:g}s (supervisor: {state})"
            break
        time.sleep(0.1)
    raise CommandExecutionError(
        f"webapp on port {port} {problem}; last lines of {logfile}:\n{vumi_files.file_tail(logfile)}"
    )


def _row(cfg, paths, port, info):
    return {"port": port, "pid": info["pid"] if info else None,
            "release": _release_of(paths, info["pid"]) if info and info["pid"] else None}  # fmt: skip


def start(cfg, paths, port):
    _configured(cfg, port)
    _current(cfg, paths)
    sup = vumi_supervisor.Supervisor(cfg, timeout=cfg["start_timeout"] + 30)
    name = vumi_supervisor.full_name(cfg, port)
    before = sup.info(name)
    up = before is not None and before["statename"] in vumi_supervisor.UP + ("BACKOFF",)
    if not up and port_taken(cfg, port):
        raise CommandExecutionError(f"port {port} on {cfg['host']} is already in use by another process")
    programs(cfg, paths)
    before = sup.info(name)  # a new or replaced group has started its ports already
    deadline = time.monotonic() + cfg["start_timeout"]
    if before and before["statename"] in vumi_supervisor.UP and up and vumi_probes.answers(cfg["host"], port):
        return dict(_row(cfg, paths, port, before), started=False, comment=f"webapp already running on port {port}")
    if not before or before["statename"] not in vumi_supervisor.UP + ("BACKOFF",):
        _start_process(sup, name, port)
    try:
        info = _answered(cfg, sup, name, port, paths.logfile(port), deadline)
    except CommandExecutionError:
        # not serving: not left half-up (supervisor would keep restarting a crashing one)
        with contextlib.suppress(vumi_supervisor.xmlrpc.client.Fault):
            sup.call("supervisor.stopProcess", name, True)
        raise
    return dict(_row(cfg, paths, port, info), started=True, comment=f"webapp started on port {port}")


def _start_process(sup, name, port):
    try:
        sup.call("supervisor.startProcess", name, False)
    except vumi_supervisor.xmlrpc.client.Fault as fault:
        if "ALREADY_STARTED" not in fault.faultString:
            raise CommandExecutionError(f"supervisord could not start port {port}: {fault.faultString}") from None


def stop(cfg, paths, port):
    _configured(cfg, port)
    sup = vumi_supervisor.Supervisor(cfg, timeout=cfg["stop_timeout"] + 30)
    name = vumi_supervisor.full_name(cfg, port)
    info = sup.info(name)
    if info is None or info["statename"] not in vumi_supervisor.UP + ("BACKOFF",):
        return {"port": port, "stopped": False, "comment": f"webapp not running on port {port}"}
    row = _row(cfg, paths, port, info)
    began = time.monotonic()
    try:  # supervisor sends stop_signal to the group, and SIGKILL after stop_timeout
        sup.call("supervisor.stopProcess", name, True)
    except vumi_supervisor.xmlrpc.client.Fault as fault:
        if "NOT_RUNNING" not in fault.faultString:
            raise CommandExecutionError(f"supervisord could not stop port {port}: {fault.faultString}") from None
    # supervisor does not say whether it had to kill: a stop that took all of stop_timeout did
    killed = time.monotonic() - began >= vumi_supervisor.stop_wait(cfg) - 0.2
    return dict(row, stopped=True, killed=killed, comment=f"webapp stopped on port {port}")


def restart(cfg, paths, port):
    _configured(cfg, port)
    # what would make the start fail is found before the running process is stopped
    _current(cfg, paths)
    programs(cfg, paths)
    stopped = stop(cfg, paths, port)
    started = start(cfg, paths, port)
    return dict(started, old_pid=stopped.get("pid"), old_release=stopped.get("release"),
                comment=f"webapp restarted on port {port}")  # fmt: skip


@contextlib.contextmanager
def port_lock(cfg, paths, port):
    """One start, stop or restart of a port at a time, across Salt jobs."""
    folder = cfg["supervisor"]["conf_dir"]
    if not os.path.isdir(paths.root) or not os.path.isdir(folder):
        yield  # nothing deployed, or no supervisor: the action says so
        return
    vumi_files.refuse_links(paths)
    # in root's folder beside the program file: root creates nothing in the user's tree
    lock = os.path.join(folder, f".{vumi_supervisor.program_name(cfg, port)}.lock")
    with vumi_lock.flock(
        lock,
        cfg["start_timeout"] + 2 * cfg["stop_timeout"] + 10,
        lambda holder: vumi_errors.Busy(
            f"another job is still starting or stopping the webapp on port {port}: {holder}", lock=lock, holder=holder
        ),
    ):
        yield


def locked(action, cfg, paths, port):
    with port_lock(cfg, paths, port):
        return action(cfg, paths, port)


CLUSTER_VERBS = {"start": "started", "stop": "stopped", "restart": "restarted"}


def cluster(action, cfg, paths, ports):
    ports = vumi_settings.parse_ports(ports) or cfg["ports"]
    for port in ports:  # all refused before any is touched
        _configured(cfg, port)
    done = []
    # One port at a time, each answering again before the next one stops. The first
    # failure stops the roll: the ports after it keep running what they ran.
    for index, port in enumerate(ports):
        try:
            done.append(locked(action, cfg, paths, port))
        except CommandExecutionError as exc:
            verb = CLUSTER_VERBS.get(action.__name__, "handled")
            left = ports[index + 1 :]
            raise vumi_errors.RollStopped(
                f"{exc}\nstopped at port {port}: {verb} "
                f"{', '.join(str(r['port']) for r in done) or 'none'}; "
                f"left as they were: {', '.join(map(str, left)) or 'none'}",
                port=port,
                done=done,
                left=left,
            ) from None
    return done


def status(cfg, paths, port=None):
    """Per port: supervisor's state, pid, uptime, release, whether it is current and answers; see ``vumi.webapp_status``."""
    sup = vumi_supervisor.Supervisor(cfg)
    group = vumi_supervisor.group_name(cfg)
    known = {}
    for info in sup.group(group):
        suffix = info["name"].rsplit("-", 1)[-1]
        if suffix.isdigit():
            known[int(suffix)] = info
    ports = [vumi_settings.parse_port(port)] if port is not None else sorted(set(cfg["ports"]) | set(known))
    current_name = vumi_manifest.current_release_safe(paths)
    result = {}
    for p in ports:
        info = known.get(p)
        running = bool(info) and info["statename"] in vumi_supervisor.UP
        release = _release_of(paths, info["pid"]) if running and info["pid"] else None
        result[p] = {
            "state": info["statename"] if info else "ABSENT",
            "running": running,
            "pid": info["pid"] if running else None,
            "release": release,
            "current": release is not None and release == current_name,
            "uptime": (info["now"] - info["start"]) if running else None,
            "listening": running and vumi_probes.port_open(cfg["host"], p),
            "answers": running and vumi_probes.answers(cfg["host"], p),
            "configured": p in cfg["ports"],
        }
    return result


# --------------------------------------------------------------------------
# A release's webapp outside supervisor: the health check's, on a spare port
# --------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    # runs in the child after it dropped to the user: if the Salt job dies, so does the webapp
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(cfg, paths, name, port, logfile):
    """
    Start release ``name``'s webapp on ``port`` as the deploy user, a child of this
    job that dies with it (no pid file: nobody else needs to find it); returns the
    ``Popen``, whose ``stop`` ends its process group.
    """
    runas = vumi_files.runas_user(cfg)
    vumi_files.makedirs(paths.logs, runas, 0o750)
    env = vumi_environment.for_release(cfg, paths, name, VUMI_PORT=port)
    command = webapp_command(cfg, paths, name, port, logfile)
    user = pwd.getpwnam(runas or pwd.getpwuid(os.getuid()).pw_name)
    drop = os.geteuid() == 0 and user.pw_uid != 0  # already the user (vumi_privileges): nothing to drop
    try:  # O_NOFOLLOW: root must not append to wherever a link planted as the log points
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    except OSError as exc:
        raise CommandExecutionError(f"cannot open the webapp's log {logfile}: {exc}") from None
    with open(fd, "ab") as logfh:
        os.fchmod(logfh.fileno(), 0o640)
        if drop:
            os.fchown(logfh.fileno(), user.pw_uid, user.pw_gid)
        proc = subprocess.Popen(  # pylint: disable=consider-using-with,subprocess-popen-preexec-fn
            ["/bin/sh", "-c", "exec " + command],
            cwd=os.path.realpath(paths.code(name)),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logfh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one
            user=user.pw_uid if drop else None,
            group=user.pw_gid if drop else None,
            extra_groups=os.getgrouplist(user.pw_name, user.pw_gid) if drop else None,  # the user's, not root's
            preexec_fn=_die_with_parent,  # pylint: disable=subprocess-popen-preexec-fn
        )
    return proc


def stop_child(proc, grace, sig="SIGTERM"):
    """Stop a webapp this job spawned (its process group), SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.Signals[sig])
    try:
        proc.wait(grace)
        return False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
        return True


def can_restart(cfg):
    """Before a switch that restarts: supervisord answers, when there are ports to restart (else it is not needed)."""
    if cfg["ports"]:
        vumi_supervisor.Supervisor(cfg, timeout=10).ping()


def restart_running(cfg, paths):
    """Restart the running ports onto ``current``, one at a time (supervisor's: root's part of a rollback)."""
    if not cfg["ports"]:
        return []  # nothing to restart: supervisord is not asked
    running = [p for p, s in status(cfg, paths).items() if s["running"] and p in cfg["ports"]]
    return [r["port"] for r in cluster(restart, cfg, paths, running)] if running else []
