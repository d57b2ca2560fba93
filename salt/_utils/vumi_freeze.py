"""
What keeps deploys off an environment for a while: an operator's freeze
(``vumi.lock`` / ``vumi.unlock`` / ``vumi.locked``, Deployer's deploy:lock) and a
fleet deploy's hold (``vumi.orch.deploy``: from its prepare to its end, no other
deploy may switch this host to another release; it lapses by itself when that
orchestration died). Neither is the deploy lock (vumi_lock.deploy_lock),
which one deploy holds while it runs.
"""

import datetime
import html
import json
import os

from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_errors
import vumi_files
import vumi_history


def _read(path):
    """
    The JSON in ``path`` (a regular file, never through a link, at most 4 KiB), {} when
    unreadable, None when absent; its values short strings (or None).
    """
    found = vumi_files.read_json(path, 4096)
    if found is None:
        return None
    if not isinstance(found, dict):
        return {}
    return {
        k: v for k, v in found.items() if isinstance(k, str) and (v is None or isinstance(v, str) and len(v) <= 1024)
    }


def locked(paths):
    """Who froze the environment, why and since when; None when it is not frozen."""
    found = _read(paths.frozen)
    if found is None:
        return None
    if not found:  # there, but not a lock file this bundle wrote: frozen all the same, and said so
        return {
            "user": None,
            "reason": f"{paths.frozen} is there but unreadable (vumi.unlock removes it)",
            "since": None,
        }
    return {"user": found.get("user"), "reason": found.get("reason"), "since": found.get("since")}


def lock(cfg, paths, reason, who):
    """Freeze the environment: deploys fail at once, naming who and why."""
    if not isinstance(reason, str) or not reason.strip():
        raise SaltInvocationError(f"invalid reason {reason!r}: say why the environment is locked")
    if not os.path.isdir(paths.root):
        raise CommandExecutionError(f"{cfg['environment']} is not deployed: {paths.root} does not exist")
    vumi_files.refuse_links(paths)
    already = locked(paths)
    entry = {"user": who.get("user"), "reason": reason.strip(), "since": vumi_files.now().isoformat(timespec="seconds")}
    vumi_files.with_reserve(paths.reserve, vumi_files.write_atomic, paths.frozen, json.dumps(entry) + "\n",
                            vumi_files.runas_user(cfg))  # fmt: skip
    vumi_history.record(paths, "lock", **entry, minion=who.get("minion"))
    return dict(entry, locked=True, was=already)


def unlock(cfg, paths, who):
    """Lift the freeze (no error when there is none)."""
    was = locked(paths) if os.path.isdir(paths.root) else None
    if was is not None:
        vumi_files.refuse_links(paths)
        os.remove(paths.frozen)
        vumi_history.record(paths, "unlock", user=who.get("user"), minion=who.get("minion"), was=was)
    return {"locked": False, "was": was}


def held(paths):
    """The fleet deploy holding the environment (release, user, jid, since, until), or None (none, or lapsed)."""
    found = _read(paths.held)
    if not found:
        return None
    try:
        until = datetime.datetime.fromisoformat(found["until"])
    except (KeyError, TypeError, ValueError):
        return None  # unreadable: it cannot say how long it holds, so it does not
    return found if until > vumi_files.now() else None


def hold(cfg, paths, release, seconds, who):
    """Hold the environment for the fleet deploy of ``release`` for ``seconds`` from now (again: renewed)."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 86400:
        raise SaltInvocationError(f"invalid hold {seconds!r}: seconds, more than 0 and at most 86400")
    now = vumi_files.now()
    entry = {
        "release": release,
        "run": who.get("run"),  # the fleet run (salt-run vumi.deploy) that holds it: its runner beats
        "user": who.get("user"),
        "jid": who.get("jid"),
        "since": now.isoformat(timespec="seconds"),
        "until": (now + datetime.timedelta(seconds=seconds)).isoformat(timespec="seconds"),
    }
    vumi_files.write_atomic(paths.held, json.dumps(entry) + "\n", vumi_files.runas_user(cfg))
    return entry


def renew(cfg, paths, run, seconds):
    """
    The heartbeat of fleet run ``run``: its hold (if it is still this run's) lasts
    ``seconds`` from now. Returns the hold, or None when this run holds nothing here.
    """
    found = held(paths)
    if not found or not run or found.get("run") != run:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 86400:
        raise SaltInvocationError(f"invalid hold {seconds!r}: seconds, more than 0 and at most 86400")
    vumi_files.refuse_links(paths)
    until = vumi_files.now() + datetime.timedelta(seconds=seconds)
    entry = dict(found, until=until.isoformat(timespec="seconds"))
    vumi_files.write_atomic(paths.held, json.dumps(entry) + "\n", vumi_files.runas_user(cfg))
    return entry


def unhold(cfg, paths, release=None):
    """End the hold of the fleet deploy of ``release`` (None: whichever holds it). Returns what held it."""
    if not os.path.isdir(paths.root):
        return None
    found = _read(paths.held)
    if found is None or (release is not None and found.get("release") not in (release, None)):
        return None
    vumi_files.refuse_links(paths)
    os.remove(paths.held)
    return found


def refuse(cfg, paths, release=None):
    """
    A deploy of a frozen environment, or of one a fleet deploy holds (for another
    release than ``release``, the one the caller deploys for that fleet deploy),
    fails before it does anything.
    """
    if not os.path.isdir(paths.root):
        return
    env = cfg["environment"]
    frozen = locked(paths)
    if frozen is not None:
        raise vumi_errors.Locked(
            f"{env} is locked by {frozen['user']} since {frozen['since']}: {frozen['reason']} "
            f"(vumi.unlock {env} lifts it)",
            user=frozen.get("user"), since=frozen.get("since"), reason=frozen.get("reason"),
        )  # fmt: skip
    fleet = held(paths)
    if fleet is not None and fleet.get("release") != release:
        job = f", run {fleet['run']}" if fleet.get("run") else (f", job {fleet['jid']}" if fleet.get("jid") else "")
        raise vumi_errors.Held(
            f"{env} is held by the fleet deploy of release {fleet.get('release')} (by {fleet.get('user')}{job}, "
            f"since {fleet.get('since')}); other deploys are refused until it ends or until {fleet.get('until')} "
            f"(vumi.unhold {env} lifts it)",
            **{k: fleet.get(k) for k in ("release", "run", "user", "jid", "since", "until")},
        )


# --------------------------------------------------------------------------
# Maintenance: traffic kept off (nginx answers 503 with a page), not deploys
# --------------------------------------------------------------------------

#: the app's own page, in its code folder: served during maintenance when the release has one
APP_PAGE = "maintenance.html"
PAGE_LIMIT = 256 * 1024

PLAIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Down for maintenance</title></head>
<body><h1>Down for maintenance</h1><p>{message}</p></body></html>
"""


def maintenance(paths):
    """Whether the environment is in maintenance, and since when (the page's time); None when it is not."""
    try:
        st = os.lstat(paths.maintenance)
    except FileNotFoundError:
        return None
    since = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)
    return {"on": True, "since": since.isoformat(timespec="seconds")}


def maintenance_on(cfg, paths, code, message=None):
    """
    As the deploy user: the maintenance page in place (nginx answers 503 with it): the
    app's own ``maintenance.html`` from ``code`` when it has one, else a plain page with
    ``message``. Returns which.
    """
    if message is not None and (not isinstance(message, str) or len(message) > 2000):
        raise SaltInvocationError(f"invalid message {message!r}: a line of text for the page")
    vumi_files.refuse_links(paths)
    own = None
    if code:
        try:
            own = vumi_files.read_bounded(os.path.join(code, APP_PAGE), PAGE_LIMIT)
        except (OSError, vumi_files.NotRegular):
            own = None  # a link, a folder, too large: the plain page
    page = own.decode("utf-8", "replace") if own else PLAIN_PAGE.format(
        message=html.escape(message or "We will be back shortly."))  # fmt: skip
    vumi_files.write_atomic(paths.maintenance, page, vumi_files.runas_user(cfg))  # 0644: nginx's workers read it
    return "app" if own else "plain"


def maintenance_off(paths):
    """As the deploy user: the page gone, the app serving again. Returns whether it was on."""
    if not os.path.lexists(paths.maintenance):
        return False
    vumi_files.refuse_links(paths)
    os.remove(paths.maintenance)
    return True
