"""
supervisord: the environment's program file and the calls that start, stop and read its programs.

One program per port, ``<app>-<env>-<port>``, and one per process type of pillar
``processes``, ``<app>-<env>-<name>`` (``numprocs`` instances ``<program>-<n>`` when more
than one), from ``<conf_dir>/<app>-<env>.conf`` (root's, 0600: it carries pillar ``env``).
Each program is its own supervisor group, so that a changed program file is applied one
program at a time (``apply_programs``): a config change rolls like a code deploy. Each
program runs in ``current``, so a restart picks up the release published last without
rewriting the file. supervisord is asked through its XML-RPC interface on the
unix socket named in ``conf_file`` (what ``supervisorctl -c conf_file`` would use).
Only supervisor's own word is trusted about a process: no pid file, no signal of ours.
"""

import configparser
import contextlib
import http.client
import logging
import os
import shlex
import socket
import xmlrpc.client

from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_environment
import vumi_files
import vumi_settings

log = logging.getLogger(__name__)

#: supervisor's states in which a process is (or is about to be) up
UP = ("RUNNING", "STARTING")


def group_name(cfg):
    """
    The environment's name in supervisor, every program's prefix (and the one group of the
    older layout); supervisor refuses ' ', ':' and '/' in names: topics/foo is topics~foo, as its folder.
    """
    return vumi_settings.env_name(cfg)


def program_name(cfg, port):
    return f"{group_name(cfg)}-{port}"


def full_name(cfg, port):
    """A port's process as supervisor's calls name it: ``<group>:<name>``, its own group."""
    name = program_name(cfg, port)
    return f"{name}:{name}"


def process_program(cfg, name):
    return f"{group_name(cfg)}-{name}"


def process_names(cfg, name):
    """The ``group:name`` of each instance of process type ``name``."""
    program, count = process_program(cfg, name), cfg["processes"][name]["numprocs"]
    return [f"{program}:{program}"] if count == 1 else [f"{program}:{program}-{n}" for n in range(count)]


def program_file(cfg):
    return os.path.join(cfg["supervisor"]["conf_dir"], f"{group_name(cfg)}.conf")


# --------------------------------------------------------------------------
# XML-RPC over supervisord's unix socket
# --------------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path, timeout):
        super().__init__()
        self._path, self._timeout = path, timeout

    def make_connection(self, host):
        return _UnixConnection(self._path, self._timeout)


def socket_path(conf_file):
    """The unix socket of ``[unix_http_server]`` in supervisord's config file."""
    parser = configparser.RawConfigParser(strict=False)
    try:
        with open(conf_file, encoding="utf-8") as fh:
            parser.read_file(fh)
    except (OSError, configparser.Error) as exc:
        raise CommandExecutionError(f"cannot read supervisord's config {conf_file}: {exc}") from None
    if not parser.has_option("unix_http_server", "file"):
        raise CommandExecutionError(f"supervisord's config {conf_file} has no [unix_http_server] file= (its socket)")
    path = parser.get("unix_http_server", "file").replace("%(here)s", os.path.dirname(os.path.abspath(conf_file)))
    return path.split(";", 1)[0].strip()


class Supervisor:
    """supervisord, as named by ``cfg['supervisor']['conf_file']``."""

    def __init__(self, cfg, timeout=30):
        self.conf_file = cfg["supervisor"]["conf_file"]
        self.socket = socket_path(self.conf_file)
        self._proxy = xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(self.socket, timeout))

    def call(self, method, *args):
        try:
            return getattr(self._proxy, method)(*args)
        except (OSError, http.client.HTTPException) as exc:
            raise CommandExecutionError(
                f"supervisord is not reachable on {self.socket} (from {self.conf_file}): {exc}; is it running?"
            ) from None

    def info(self, name):
        """supervisor's word on a process, or None when it has no such process."""
        try:
            return self.call("supervisor.getProcessInfo", name)
        except xmlrpc.client.Fault as fault:
            if "BAD_NAME" in fault.faultString:
                return None
            raise CommandExecutionError(f"supervisord: {fault.faultString}") from None

    def group(self, group):
        return [p for p in self.call("supervisor.getAllProcessInfo") if p["group"] == group]

    def ping(self):
        return self.call("supervisor.getState")


# --------------------------------------------------------------------------
# The program file
# --------------------------------------------------------------------------


def _value(text, what):
    """
    A value for supervisor's ini file: one line, its own ``%`` escaped, no control
    character (a line break splits the file; a \\x0b breaks the XML of supervisor's
    answers, for every client of it).
    """
    text = str(text)
    if vumi_settings.CONTROL_RE.search(text):
        raise SaltInvocationError(f"{what} cannot hold a line break or control character for supervisor: {text!r}")
    return text.replace("%", "%%")


def _env_value(key, value):
    # supervisor reads environment= with a non-POSIX shlex: quotes are kept off, no escapes
    value = str(value)
    quote = '"' if '"' not in value else "'"
    if quote in value:
        raise SaltInvocationError(f"env {key}: a value with both ' and \" cannot be given to supervisor")
    return f"{key}={quote}{_value(value, f'env {key}')}{quote}"


def stop_wait(cfg):
    """supervisor's stopwaitsecs: whole seconds, at least one."""
    return max(1, int(round(cfg["stop_timeout"])))


#: the program file's line that remembers the ports ``vumi.start_webapp`` started beyond pillar's
EXTRA_MARK = "; started by vumi.start_webapp, not in pillar ports:"


def _program(cfg, paths, name, command, env, logfile, startsecs, stop_signal, stop_timeout):
    conf = cfg["supervisor"]
    return [
        "",
        f"[program:{name}]",
        "command=/bin/sh -c " + _value(shlex.quote("exec " + command), "command"),
        f"directory={_value(paths.current_code(), 'directory')}",
        f"user={_value(cfg['user'], 'user')}",
        "environment=" + ",".join(_env_value(k, v) for k, v in sorted(env.items())),
        "autostart=true",
        "autorestart=true",
        f"startsecs={startsecs}",
        f"startretries={conf['start_retries']}",
        f"stopsignal={stop_signal[3:]}",
        f"stopwaitsecs={max(1, int(round(stop_timeout)))}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={logfile}",
        f"stdout_logfile_maxbytes={conf['log_max_bytes']}",
        f"stdout_logfile_backups={conf['log_backups']}",
    ]


def render_programs(cfg, paths, command_for, process_command_for=None, extra=()):
    """
    The text of the environment's program file: a program per port of ``cfg['ports']`` and
    of ``extra`` (ports started beyond pillar's, remembered here), rendered by
    ``command_for(port)``, then one per process type, by ``process_command_for(name)``.
    """
    env = vumi_environment.for_current(cfg, paths)
    lines = [f"; {cfg['app']} {cfg['environment']}: written by vumi-salt (state.apply rewrites it)"]
    extra = sorted(set(extra) - set(cfg["ports"]))
    if extra:
        lines.append(f"{EXTRA_MARK} {' '.join(map(str, extra))}")
    for port in list(cfg["ports"]) + extra:
        # a crash within 5 s is a failed start: retried start_retries times, then FATAL
        lines += _program(cfg, paths, program_name(cfg, port), command_for(port), dict(env, VUMI_PORT=str(port)),
                          _value(paths.logfile(port), "log file"), 5, cfg["stop_signal"], cfg["stop_timeout"])  # fmt: skip
    for name, proc in cfg["processes"].items():
        logfile = _value(paths.process_logfile(name), "log file")
        if proc["numprocs"] > 1:  # process.<name>.<n>.log: supervisor fills in each instance's number
            logfile = _value(paths.process_logfile(name, 0)[: -len("0.log")], "log file") + "%(process_num)d.log"
        lines += _program(cfg, paths, process_program(cfg, name), process_command_for(name), dict(env, VUMI_PROCESS=name),
                          logfile, 1, proc["stop_signal"], proc["stop_timeout"])  # fmt: skip
        if proc["numprocs"] > 1:
            lines += [f"numprocs={proc['numprocs']}", "process_name=%(program_name)s-%(process_num)d"]
    return "\n".join(lines) + "\n"


def extra_ports(cfg):
    """The ports ``vumi.start_webapp`` started beyond pillar's, as the program file remembers them."""
    for line in (read_program_file(cfg) or "").splitlines():
        if line.startswith(EXTRA_MARK):
            return [int(p) for p in line[len(EXTRA_MARK) :].split() if p.isdigit()]
    return []


def read_program_file(cfg):
    """The program file's text (root's file, in root's folder), or None."""
    return _read(program_file(cfg))


def file_ports(cfg):
    """The ports the program file runs (pillar's when it was written, and those started beyond them)."""
    prefix = group_name(cfg) + "-"
    names = sections(read_program_file(cfg))
    return [int(n[len(prefix) :]) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()]


def sections(text):
    """``{program: its options}`` of a program file's text."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.read_string(text or "")
    return {s.split(":", 1)[1]: dict(parser.items(s)) for s in parser.sections() if s.startswith("program:")}


def _read(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {path}: {exc}") from None


def _write(path, text):
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise CommandExecutionError(f"supervisor's conf_dir {folder} does not exist (is supervisor installed?)")
    try:
        vumi_files.write_atomic(path, text, None, 0o600)
    except OSError as exc:
        raise CommandExecutionError(f"cannot write the program file {path}: {exc}") from None


def _reload(sup):
    """supervisord reads its config again; what changed is applied by the caller, one program at a time."""
    try:
        return sup.call("supervisor.reloadConfig")[0]
    except xmlrpc.client.Fault as fault:
        raise CommandExecutionError(
            f"supervisord could not read its config ({sup.conf_file}): {fault.faultString}"
        ) from None


def _drop(sup, group):
    with contextlib.suppress(xmlrpc.client.Fault):  # BAD_NAME: not loaded
        sup.call("supervisor.stopProcessGroup", group, True)
        sup.call("supervisor.removeProcessGroup", group)


def _add(sup, group):
    """Load a program from the config read last; ``autostart`` starts it."""
    try:
        sup.call("supervisor.addProcessGroup", group)
    except xmlrpc.client.Fault as fault:
        if "ALREADY_ADDED" not in fault.faultString:
            raise CommandExecutionError(f"supervisord could not add {group}: {fault.faultString}") from None


def plan(cfg, text, sup):
    """(programs to (re)load, programs to drop, the older layout's group or None) to make ``text`` run."""
    old_text = _read(program_file(cfg))
    loaded = {p["group"] for p in sup.call("supervisor.getAllProcessInfo")}
    old, new = sections(old_text), sections(text)
    legacy = group_name(cfg)
    legacy = legacy if legacy in loaded and f"[group:{legacy}]" in (old_text or "") else None
    todo = [n for n in new if n not in loaded or old.get(n) != new[n]]
    gone = [n for n in old if n not in new and n in loaded]
    return todo, gone, legacy


def apply_programs(cfg, text, ready, test=False, sup=None):
    """
    Make the program file say ``text`` (root's, 0600) and have supervisord run it, one
    program at a time: each changed or new one is replaced, then ``ready(program)`` waits
    for it (a port answering HTTP) before the next; ports first, then the processes. The
    first that is not ready stops the roll: the file is put back, that program and those
    replaced before it go back on what they ran, and the error names it. Returns the
    programs replaced, started or dropped (``test``: those that would be).
    """
    path = program_file(cfg)
    sup = sup or Supervisor(cfg)
    sup.ping()  # not running: say so before anything is written
    old_text = _read(path)
    todo, gone, legacy = plan(cfg, text, sup)
    if old_text == text and not todo and not gone and not legacy:
        return []
    changed = todo + gone + ([legacy] if legacy else [])
    if test:
        return changed
    _write(path, text)
    _reload(sup)
    done = []
    try:
        for group in gone:
            _drop(sup, group)
        for group in todo:
            if legacy:  # the older layout's process of this port stops only now: one port at a time
                with contextlib.suppress(xmlrpc.client.Fault):
                    sup.call("supervisor.stopProcess", f"{legacy}:{group}", True)
            done.append(group)
            _drop(sup, group)
            _add(sup, group)
            ready(group)
    except CommandExecutionError as exc:
        failed, before = done[-1], done[:-1]
        left = [g for g in todo if g not in done]
        if failed not in sections(old_text):  # a new program: nothing to go back to; it stays, stopped
            with contextlib.suppress(xmlrpc.client.Fault):  # not left crash-looping under supervisor
                sup.call("supervisor.stopProcessGroup", failed, True)
            raise CommandExecutionError(f"{exc}\n{failed} is new and did not come up; not started: "
                                        f"{', '.join(left) or 'none'}") from None  # fmt: skip
        _put_back(sup, path, old_text, done, ready, legacy)
        raise CommandExecutionError(
            f"{exc}\nthe new program file stopped at {failed}: it runs what it ran before"
            f"{', as do ' + ', '.join(before) if before else ''}; left as they were: {', '.join(left) or 'none'}; "
            f"{path} is as it was"
        ) from None
    if legacy:
        _drop(sup, legacy)
    return changed


def _put_back(sup, path, old_text, done, ready, legacy=None):
    """
    The programs of ``done`` back on ``old_text``'s word (a new one dropped), the last first;
    from the older layout, its one group's process of that program started again.
    """
    _write(path, old_text)
    _reload(sup)
    old = sections(old_text)
    for group in reversed(done):
        _drop(sup, group)
        if group in old and legacy:
            with contextlib.suppress(xmlrpc.client.Fault):
                sup.call("supervisor.startProcess", f"{legacy}:{group}", False)
        elif group in old:
            _add(sup, group)
            with contextlib.suppress(CommandExecutionError):
                ready(group)


def drop_group(cfg, test=False):
    """
    The environment's programs gone from supervisord: its group stopped and removed, its
    program file deleted, the config read again. What was there, as (kind, what) pairs;
    supervisord that does not answer is an error only when it has something to stop.
    """
    path = program_file(cfg)
    try:
        sup = Supervisor(cfg)
        groups = set(sections(_read(path))) | {group_name(cfg)}
        loaded = [p for p in sup.call("supervisor.getAllProcessInfo") if p["group"] in groups]
    except CommandExecutionError:
        if os.path.lexists(path):
            raise
        return []  # no program file: nothing of this environment for supervisord to run
    found = [("supervisor", f"{p['group']}:{p['name']}") for p in loaded]
    if os.path.lexists(path):
        found.append(("supervisor", path))
    if test or not found:
        return found
    for group in sorted({p["group"] for p in loaded}):
        _drop(sup, group)
    if os.path.lexists(path):
        os.unlink(path)
    sup.call("supervisor.reloadConfig")
    return found


def webapp_logs(cfg, paths):
    """
    ``shared/logs/webapp.<port>.log``, the user's link to each configured port's log
    (which supervisord writes in root's folder, ``paths.webapp_logs``). A file already
    there (from an older layout) is left alone.
    """
    for target, link in log_links(cfg, paths):
        if not os.path.lexists(link):
            os.symlink(target, link)


def log_links(cfg, paths):
    """(log, the user's link to it) of each configured port and each process instance."""
    links = [(paths.logfile(port), paths.log_link(port)) for port in cfg["ports"]]
    for name, proc in cfg["processes"].items():
        nums = range(proc["numprocs"]) if proc["numprocs"] > 1 else [None]
        links += [(paths.process_logfile(name, n), paths.process_log_link(name, n)) for n in nums]
    return links
