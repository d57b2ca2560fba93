"""
supervisord: the environment's program file and the calls that start, stop and read its webapps.

One program per configured port, ``<app>-<env>-<port>``, in a group ``<app>-<env>``, from
``<conf_dir>/<app>-<env>.conf`` (root's, 0600: it carries pillar ``env``). Each program
runs in ``current``, so a restart picks up the release published last without
rewriting the file. supervisord is asked through its XML-RPC interface on the
unix socket named in ``conf_file`` (what ``supervisorctl -c conf_file`` would use).
Only supervisor's own word is trusted about a process: no pid file, no signal of ours.
"""

import configparser
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
    # supervisor refuses ' ', ':' and '/' in names; a topics/foo environment is topics~foo, as its folder
    return f"{cfg['app']}-{vumi_settings.env_dirname(cfg['environment'])}"


def program_name(cfg, port):
    return f"{group_name(cfg)}-{port}"


def full_name(cfg, port):
    return f"{group_name(cfg)}:{program_name(cfg, port)}"


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


def render_programs(cfg, paths, command_for):
    """The text of the environment's program file; ``command_for(port)`` renders a port's command line."""
    conf = cfg["supervisor"]
    group = group_name(cfg)
    env = vumi_environment.for_current(cfg, paths)
    lines = [
        f"; {cfg['app']} {cfg['environment']}: written by vumi-salt (state.apply rewrites it)",
        f"[group:{group}]",
        f"programs={','.join(program_name(cfg, port) for port in cfg['ports'])}",
    ]
    for port in cfg["ports"]:
        port_env = dict(env, VUMI_PORT=str(port))
        lines += [
            "",
            f"[program:{program_name(cfg, port)}]",
            "command=/bin/sh -c " + _value(shlex.quote("exec " + command_for(port)), "webapp_command"),
            f"directory={_value(paths.current_code(), 'directory')}",
            f"user={_value(cfg['user'], 'user')}",
            "environment=" + ",".join(_env_value(k, v) for k, v in sorted(port_env.items())),
            "autostart=true",
            "autorestart=true",
            # a crash within 5 s is a failed start: retried start_retries times, then FATAL
            "startsecs=5",
            f"startretries={conf['start_retries']}",
            f"stopsignal={cfg['stop_signal'][3:]}",
            f"stopwaitsecs={stop_wait(cfg)}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_value(paths.logfile(port), 'log file')}",
            f"stdout_logfile_maxbytes={conf['log_max_bytes']}",
            f"stdout_logfile_backups={conf['log_backups']}",
        ]
    return "\n".join(lines) + "\n"


def write_programs(cfg, paths, text, test=False, sup=None):
    """
    Make the program file say ``text`` (root's, 0600); if it changed, have supervisord
    read it and apply it to this environment's group alone. True if anything changed.
    """
    path = program_file(cfg)
    try:
        with open(path, encoding="utf-8") as fh:
            same = fh.read() == text
    except FileNotFoundError:
        same = False
    except OSError as exc:
        raise CommandExecutionError(f"cannot read {path}: {exc}") from None
    sup = sup or Supervisor(cfg)
    sup.ping()  # not running: say so before anything is written
    group = group_name(cfg)
    loaded = bool(sup.group(group))
    if same and loaded:
        return False
    if test:
        return True
    if not same:
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            raise CommandExecutionError(f"supervisor's conf_dir {folder} does not exist (is supervisor installed?)")
        try:
            vumi_files.write_atomic(path, text, None, 0o600)
        except OSError as exc:
            raise CommandExecutionError(f"cannot write the program file {path}: {exc}") from None
    apply_group(sup, group)
    return True


def apply_group(sup, group):
    """supervisorctl's ``update``, for one group: read the config, then add, replace or drop the group."""
    try:
        added, changed, removed = sup.call("supervisor.reloadConfig")[0]
    except xmlrpc.client.Fault as fault:
        raise CommandExecutionError(
            f"supervisord could not read its config ({sup.conf_file}): {fault.faultString}"
        ) from None
    if group in changed or group in removed:
        sup.call("supervisor.stopProcessGroup", group, True)
        sup.call("supervisor.removeProcessGroup", group)
    if group in added or group in changed or (group not in removed and not sup.group(group)):
        try:
            sup.call("supervisor.addProcessGroup", group)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_ADDED" not in fault.faultString:
                raise CommandExecutionError(f"supervisord could not add {group}: {fault.faultString}") from None


def drop_group(cfg, test=False):
    """
    The environment's programs gone from supervisord: its group stopped and removed, its
    program file deleted, the config read again. What was there, as (kind, what) pairs;
    supervisord that does not answer is an error only when it has something to stop.
    """
    path, group = program_file(cfg), group_name(cfg)
    try:
        sup = Supervisor(cfg)
        loaded = sup.group(group)
    except CommandExecutionError:
        if os.path.lexists(path):
            raise
        return []  # no program file: nothing of this environment for supervisord to run
    found = [("supervisor", f"{group}:{p['name']}") for p in loaded]
    if os.path.lexists(path):
        found.append(("supervisor", path))
    if test or not found:
        return found
    if loaded:
        sup.call("supervisor.stopProcessGroup", group, True)
        sup.call("supervisor.removeProcessGroup", group)
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
    for port in cfg["ports"]:
        if not os.path.lexists(paths.log_link(port)):
            os.symlink(paths.logfile(port), paths.log_link(port))
