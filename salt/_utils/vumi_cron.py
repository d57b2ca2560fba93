"""
Scheduled jobs (pillar ``cron``): entries of the deploy user's crontab, made with Salt's own
``cron`` functions, run as that user (``vumi_privileges.as_user``): root neither reads nor
writes the user's crontab.

Each entry carries Salt's identifier ``vumi:<app>:<env>:<job>``, so that the entries of
an environment are found again, changed in place, and removed when pillar drops them;
the user's other entries are never touched. A job runs in ``current`` (the release that
is live when it fires) with the webapps' environment, read from
``shared/.cron.env`` (the user's, 0600: it may hold secrets, which a crontab line would
show to ``ps``), and appends its output to ``shared/logs/cron.<job>.log``.
"""

import os
import shlex

from salt.exceptions import CommandExecutionError

import vumi_environment
import vumi_files
import vumi_settings
import vumi_webapp

FIELDS = ("minute", "hour", "daymonth", "month", "dayweek")


def prefix(cfg):
    return f"vumi:{cfg['app']}:{vumi_settings.env_dirname(cfg['environment'])}:"


def env_file(paths):
    return os.path.join(paths.shared, ".cron.env")


def line(cfg, paths, name, job):
    """The command of job ``name``'s crontab entry (``%`` escaped: cron reads it as a line break)."""
    command = vumi_webapp.process_command_line(cfg, paths, job["command"], f"cron:{name}:command")
    log = os.path.join(paths.logs, f"cron.{name}.log")
    text = (f"cd {shlex.quote(paths.current_code())} && . {shlex.quote(env_file(paths))} && "
            f"{command} >> {shlex.quote(log)} 2>&1")  # fmt: skip
    return text.replace("%", "\\%")


def _env_text(cfg, paths):
    env = vumi_environment.for_current(cfg, paths)
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))


def sync(cfg, paths, salt, test=False):
    """
    Make the user's crontab hold the environment's jobs, exactly (as the user). Returns
    ``{job: {"old": line or None, "new": line or None}}`` for each entry made, changed or
    removed (``test``: that would be).
    """
    user, mark = cfg["user"], prefix(cfg)
    try:
        tab = salt["cron.list_tab"](user)
    except Exception as exc:  # pylint: disable=broad-except
        raise CommandExecutionError(f"cannot read {user}'s crontab: {exc}") from None
    have = {c["identifier"]: c for c in tab.get("crons") or [] if str(c.get("identifier") or "").startswith(mark)}
    changes = {}
    for name, job in cfg["cron"].items():
        minute, hour, daymonth, month, dayweek = job["schedule"].split()
        want = {"minute": minute, "hour": hour, "daymonth": daymonth, "month": month, "dayweek": dayweek,
                "cmd": line(cfg, paths, name, job)}  # fmt: skip
        old = have.pop(mark + name, None)
        if old and all(str(old.get(k)) == v for k, v in want.items()):
            continue
        changes[name] = {"old": _shown(old), "new": _shown(want)}
        if not test:
            _check(salt["cron.set_job"](user, comment=None, identifier=mark + name, **want), name)
    for identifier, old in have.items():
        changes[identifier[len(mark) :]] = {"old": _shown(old), "new": None}
        if not test:
            _check(salt["cron.rm_job"](user, old["cmd"], identifier=identifier), identifier[len(mark) :])
    if not test and cfg["cron"]:
        path = env_file(paths)
        text = _env_text(cfg, paths)
        try:
            with open(path, encoding="utf-8") as fh:
                same = fh.read() == text
        except OSError:
            same = False
        if not same:
            vumi_files.write_atomic(path, text, None, 0o600)
    return changes


def _shown(entry):
    return None if entry is None else " ".join(str(entry[k]) for k in FIELDS) + " " + entry["cmd"]


def _check(result, name):
    if result not in ("new", "updated", "present", "absent", "removed"):
        raise CommandExecutionError(f"cron job {name}: Salt's cron module said {result!r}")
