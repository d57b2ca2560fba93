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


def _listeners(host, port):
    """The socket inodes listening on ``host:port`` (or on every address, which takes it too), from the kernel's tables."""
    try:
        v4 = socket.inet_aton(socket.gethostbyname(host))
    except OSError:
        v4 = None
    taken = {
        "/proc/net/tcp": {_kernel_hex(bytes(4))} | ({_kernel_hex(v4)} if v4 else set()),
        "/proc/net/tcp6": {_kernel_hex(bytes(16))} | ({_kernel_hex(bytes(10) + b"\xff\xff" + v4)} if v4 else set()),
    }
    found = []
    for table, addresses in taken.items():
        try:
            with open(table, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()  # sl local_address rem_address st ... uid timeout inode
                    if len(fields) > 9 and fields[3] == "0A":
                        address, _, hexport = fields[1].partition(":")
                        if int(hexport, 16) == port and address in addresses:
                            found.append(fields[9])
        except OSError:
            continue
    return found


def listening(host, port):
    """
    Whether a socket listens on ``host:port``, from the kernel's tables: no connection is
    made, so a foreign listener's backlog is not filled by asking.
    """
    return bool(_listeners(host, port))


def holder(host, port):
    """Who listens on ``host:port``: "pid N (name)" from /proc (the kernel's word), or "another process"."""
    wanted = {f"socket:[{inode}]" for inode in _listeners(host, port)}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in os.listdir(f"/proc/{pid}/fd")):
                with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
                    return f"pid {pid} ({fh.read(64).strip()})"
        except OSError:
            continue
    return "another process"


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


def _fields(cfg, paths, name, supervised):
    code = paths.current_code() if supervised else paths.code(name)
    return {
        "host": cfg["host"],
        "settings": vumi_settings.settings_module(cfg),
        "env": cfg["environment"],
        "branch": cfg["branch"],
        "code": code,
        "venv": paths.current_venv() if supervised else paths.venv(name),
        "current": paths.current,
    }


def _render(cfg, paths, name, template, fields, what):
    if "{wsgi}" in template:
        fields["wsgi"] = wsgi_module(cfg, paths.code(name))
    quoted = {k: shlex.quote(str(v)) for k, v in fields.items()}
    try:
        return template.format(**quoted)
    except (KeyError, IndexError, ValueError) as exc:
        problem = f"{{{exc.args[0]}}} is not a field" if isinstance(exc, KeyError) else str(exc)
        raise SaltInvocationError(
            f"invalid {what} {template!r}: {problem} (use {', '.join('{' + f + '}' for f in sorted(fields))})"
        ) from None


def webapp_command(cfg, paths, name, port, logfile=None, supervised=False):
    """
    The command line of release ``name``'s webapp on ``port``; ``supervised``: the
    program's, whose paths go through ``current`` (it runs whatever is published when it starts).
    """
    fields = dict(_fields(cfg, paths, name, supervised), port=port, logfile=logfile or paths.logfile(port),
                  pidfile=paths.pidfile(port))  # for a command that insists on one: never read here  # fmt: skip
    return _render(cfg, paths, name, cfg["webapp_command"], fields, "webapp_command")


def process_command(cfg, paths, name, process):
    """The command line of process type ``process``'s program: paths through ``current``."""
    return process_command_line(cfg, paths, cfg["processes"][process]["command"], f"processes:{process}:command", name)


def process_command_line(cfg, paths, template, what, name=None):
    """A command line (a process's, a cron job's) of the release that is current when it runs."""
    name = name or _current(cfg, paths)
    return _render(cfg, paths, name, template, _fields(cfg, paths, name, True), what)


def all_ports(cfg):
    """
    pillar's ports, then those that run for the environment beyond them: started by
    ``vumi.start_webapp``, or by an earlier ``state.apply`` with other ports (the program file says).
    """
    found = vumi_supervisor.extra_ports(cfg) + vumi_supervisor.file_ports(cfg)
    return list(cfg["ports"]) + sorted(set(found) - set(cfg["ports"]))


def _current(cfg, paths):
    name = vumi_manifest.current_release(paths)
    if name is None or not os.path.isdir(paths.code(name)):
        raise CommandExecutionError(f"{cfg['environment']} has no current release; deploy first")
    return name


def _configured(cfg, port):
    if port not in all_ports(cfg):
        raise SaltInvocationError(
            f"port {port} does not run for {cfg['environment']} (ports: "
            f"{', '.join(map(str, all_ports(cfg))) or 'none'}); vumi.start_webapp starts it"
        )


def programs(cfg, paths, test=False, extra=None):
    """
    Write the environment's supervisor programs (every port, then every process type) and
    run them, one changed program at a time; the programs replaced (``test``: would be).
    ``extra``: the ports beyond pillar's to remember (default: those remembered).
    """
    name = _current(cfg, paths)
    extra = vumi_supervisor.extra_ports(cfg) if extra is None else extra
    text = vumi_supervisor.render_programs(
        cfg, paths, lambda port: webapp_command(cfg, paths, name, port, supervised=True),
        lambda process: process_command(cfg, paths, name, process), extra,
    )  # fmt: skip
    if not os.path.isdir(paths.logs) or os.path.islink(paths.logs):
        raise CommandExecutionError(f"{paths.logs} is not a folder: run vumi.layout {cfg['environment']} first")
    # a port another process holds would crash-loop under supervisor: refused before the file says it
    sup = vumi_supervisor.Supervisor(cfg, timeout=cfg["start_timeout"] + 2 * cfg["stop_timeout"] + 30)
    for port in sorted(set(cfg["ports"]) | set(extra)):
        # its own program's, else the older layout's one group's (moved over by the roll)
        info = sup.info(vumi_supervisor.full_name(cfg, port)) or sup.info(
            f"{vumi_supervisor.group_name(cfg)}:{vumi_supervisor.program_name(cfg, port)}"
        )
        if (info is None or info["statename"] not in vumi_supervisor.UP + ("BACKOFF",)) and port_taken(cfg, port):
            raise CommandExecutionError(
                f"port {port} on {cfg['host']} is already in use by {holder(cfg['host'], port)}"
            )
    if not test:
        vumi_privileges.ensure_log_dir(cfg, paths)  # root's folder: supervisord writes there
        if not all(os.path.lexists(link) for _, link in vumi_supervisor.log_links(cfg, paths)):
            vumi_privileges.as_user(cfg, None, None, vumi_supervisor.webapp_logs, cfg, paths)
    return vumi_supervisor.apply_programs(cfg, text, lambda group: _ready(cfg, paths, sup, group), test=test, sup=sup)


def _ready(cfg, paths, sup, group):
    """A program just (re)loaded is up: a port answers HTTP; a process type's instances are RUNNING."""
    deadline = time.monotonic() + cfg["start_timeout"]
    prefix = vumi_supervisor.group_name(cfg) + "-"
    suffix = group[len(prefix) :]
    if suffix.isdigit():
        _answered(cfg, sup, f"{group}:{group}", int(suffix), paths.logfile(int(suffix)), deadline)
    elif suffix in cfg["processes"]:
        for full in vumi_supervisor.process_names(cfg, suffix):
            process_running(cfg, paths, sup, full, suffix, deadline)


def process_running(cfg, paths, sup, full, process, deadline):
    """Wait until a process's instance is RUNNING (up for supervisor's ``startsecs``); its log's tail if not."""
    while True:
        info = sup.info(full)
        state = info["statename"] if info else "GONE"
        if state == "RUNNING":
            return info
        if state in ("FATAL", "STOPPED", "GONE", "EXITED") or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    num = full.rsplit("-", 1)[1] if cfg["processes"][process]["numprocs"] > 1 else None
    logfile = paths.process_logfile(process, num)
    raise CommandExecutionError(
        f"process {process} ({full}) is {state} in supervisor ({(info or {}).get('spawnerr') or 'exited'}, "
        f"not RUNNING within {cfg['start_timeout']:g}s); last lines of {logfile}:\n{vumi_files.file_tail(logfile)}"
    )


def release_of(paths, pid):
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
            "release": release_of(paths, info["pid"]) if info and info["pid"] else None}  # fmt: skip


def start(cfg, paths, port):
    """Start a port, pillar's or any other (remembered in the program file until it is stopped)."""
    _current(cfg, paths)
    sup = vumi_supervisor.Supervisor(cfg, timeout=cfg["start_timeout"] + 30)
    name = vumi_supervisor.full_name(cfg, port)
    before = sup.info(name)
    up = before is not None and before["statename"] in vumi_supervisor.UP + ("BACKOFF",)
    if not up and port_taken(cfg, port):
        raise CommandExecutionError(f"port {port} on {cfg['host']} is already in use by {holder(cfg['host'], port)}")
    extra = vumi_supervisor.extra_ports(cfg)
    programs(cfg, paths, extra=extra if port in cfg["ports"] or port in extra else extra + [port])
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


def stop(cfg, paths, port, forget=True):
    """Stop a port; one started beyond pillar's is then forgotten (``forget``: a restart keeps it)."""
    _configured(cfg, port)
    sup = vumi_supervisor.Supervisor(cfg, timeout=cfg["stop_timeout"] + 30)
    name = vumi_supervisor.full_name(cfg, port)
    info = sup.info(name)
    if info is None or info["statename"] not in vumi_supervisor.UP + ("BACKOFF",):
        ret = {"port": port, "stopped": False, "comment": f"webapp not running on port {port}"}
    else:
        ret = _row(cfg, paths, port, info)
        began = time.monotonic()
        try:  # supervisor sends stop_signal to the group, and SIGKILL after stop_timeout
            sup.call("supervisor.stopProcess", name, True)
        except vumi_supervisor.xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise CommandExecutionError(f"supervisord could not stop port {port}: {fault.faultString}") from None
        # supervisor does not say whether it had to kill: a stop that took all of stop_timeout did
        killed = time.monotonic() - began >= vumi_supervisor.stop_wait(cfg) - 0.2
        ret.update(stopped=True, killed=killed, comment=f"webapp stopped on port {port}")
    extra = vumi_supervisor.extra_ports(cfg)
    if forget and port in extra and port not in cfg["ports"]:
        with contextlib.suppress(CommandExecutionError):  # no current release: it is stopped all the same
            programs(cfg, paths, extra=[p for p in extra if p != port])  # its (stopped) program dropped
    return ret


def restart(cfg, paths, port):
    _configured(cfg, port)
    # what would make the start fail is found before the running process is stopped
    _current(cfg, paths)
    extra = vumi_supervisor.extra_ports(cfg)
    # a port pillar no longer lists, restarted by hand, is kept as one vumi.start_webapp started
    programs(cfg, paths, extra=extra if port in cfg["ports"] or port in extra else extra + [port])
    stopped = stop(cfg, paths, port, forget=False)
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
    ports = vumi_settings.parse_ports(ports) or all_ports(cfg)
    for port in ports if action is not start else ():  # all refused before any is touched
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
    prefix = vumi_supervisor.group_name(cfg) + "-"
    known = {}
    for info in sup.call("supervisor.getAllProcessInfo"):
        suffix = info["group"][len(prefix) :] if info["group"].startswith(prefix) else ""
        if suffix.isdigit() and info["name"] == info["group"]:
            known[int(suffix)] = info
        elif info["group"] == prefix[:-1]:  # the older layout's one group
            known[int(info["name"].rsplit("-", 1)[-1])] = info
    extra = [p for p in vumi_supervisor.extra_ports(cfg) if p not in cfg["ports"]]
    listed = [p for p in known if p in extra or p in vumi_supervisor.file_ports(cfg)]
    others = sorted((set(extra) | set(listed)) - set(cfg["ports"]))
    ports = [vumi_settings.parse_port(port)] if port is not None else list(cfg["ports"]) + others
    current_name = vumi_manifest.current_release_safe(paths)
    result = {}
    for p in ports:
        result[p] = row = process_row(paths, known.get(p), current_name)
        running = row["running"]
        row.update({
            "listening": running and vumi_probes.port_open(cfg["host"], p),
            "answers": running and vumi_probes.answers(cfg["host"], p),
            "configured": p in cfg["ports"],
            "extra": p in extra,  # started by vumi.start_webapp beyond pillar's ports: kept until stopped
        })  # fmt: skip
    return result


def process_row(paths, info, current_name):
    """supervisor's word on a process (``info``, or None: it has none), with the release it runs."""
    running = bool(info) and info["statename"] in vumi_supervisor.UP
    release = release_of(paths, info["pid"]) if running and info["pid"] else None
    return {
        "state": info["statename"] if info else "ABSENT",
        "running": running,
        "pid": info["pid"] if running else None,
        "release": release,
        "current": release is not None and release == current_name,
        "uptime": (info["now"] - info["start"]) if running else None,
    }


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
    """Before a switch that restarts: supervisord answers, when there is something to restart (else it is not needed)."""
    if cfg["ports"] or cfg["processes"]:
        vumi_supervisor.Supervisor(cfg, timeout=10).ping()


def restart_running(cfg, paths):
    """Restart the running ports onto ``current``, one at a time (supervisor's: root's part of a rollback)."""
    if not cfg["ports"] and not vumi_supervisor.extra_ports(cfg):
        return []  # nothing to restart: supervisord is not asked
    running = [p for p, s in status(cfg, paths).items() if s["running"] and p in all_ports(cfg)]
    return [r["port"] for r in cluster(restart, cfg, paths, running)] if running else []
