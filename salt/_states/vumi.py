"""
Keep an environment deployed at its branch's revision, with its webapp running.

Thin over the ``vumi`` execution module: each state asks what is, decides,
and either predicts (``test=True``) or acts, and reports ``changes``.

.. code-block:: yaml

    staging:
      vumi.deployed: []
    staging-webapp:
      vumi.webapp_running:
        - name: staging
        - ports: [8000, 8001]
        - watch:
          - vumi: staging
"""

import functools
import pwd

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:  # the bundle's helpers, as the execution module finds them
    import vumi_errors
except ImportError:
    vumi_errors = None

__virtualname__ = "vumi"

_ERRORS = (CommandExecutionError, SaltInvocationError)


def __virtual__():
    if "vumi.deploy" not in __salt__ or vumi_errors is None:
        return (False, "the vumi execution module is not available")
    return __virtualname__


#: what ``state.single``/``state.apply`` hand a state besides its own arguments: Salt's,
#: not settings of the environment
SALT_KWARGS = ("pillar", "pillarenv", "saltenv", "queue", "concurrent", "test", "localconfig", "state_uuid")


def _settings_only(fn):
    """``fn`` given only the settings of its keyword arguments (``salt-call state.single vumi.deployed
    staging pillar='{...}'`` passes ``pillar`` on to the state)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **{k: v for k, v in kwargs.items() if k not in SALT_KWARGS})

    return wrapper


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


@_settings_only
def settings_valid(name, **kwargs):
    """
    The settings of environment ``name`` are valid: every key of pillar ``vumi`` (and of
    the minion's ``vumi`` option) known, each value checked. Otherwise the state fails,
    naming each problem (``unknown key pillar vumi:requirments; did you mean
    requirements?``). The ``vumi`` SLS runs it first, with ``failhard``: nothing of the
    environment (a database, a folder, a site) is made from settings with a typo.

    name
        The environment.
    """
    ret = _ret(name)
    try:
        __salt__["vumi.settings"](name, **kwargs)
    except _ERRORS as exc:
        return dict(ret, result=False, comment=str(exc))
    return dict(ret, comment=f"the settings of {name} are valid")


@_settings_only
def ready(name, supervised=False, **kwargs):
    """
    Environment ``name`` can be deployed: the pre-flight of ``vumi.check`` finds
    nothing in the way (its branch or pin exists upstream, asked with one ``git
    ls-remote`` as the deploy user; the interpreter runs as that user; the folder can
    be made; the requirements are in the commit when the cache has it; room on the
    disk). The ``vumi`` SLS makes nothing of an environment (its database, folders,
    nginx site, supervisor programs) until this state passes, so a misspelt branch or
    a wrong ``repo_url`` leaves nothing behind. It changes nothing itself. A lock or a
    running deploy is left to ``vumi.deployed`` (a frozen environment keeps running).

    name
        The environment.
    supervised
        Its webapp runs under supervisord here: supervisord must answer too.
    """
    ret = _ret(name)
    try:
        cfg = __salt__["vumi.settings"](name, **kwargs)
        if __opts__["test"] and not _user_exists(cfg["user"]):
            return dict(ret, result=None, comment=f"user {cfg['user']} is made first; then {name} is checked")
        checked = __salt__["vumi.check"](name, **kwargs)
    except _ERRORS as exc:
        return dict(ret, result=False, comment=str(exc))
    ignored = {"lock"} | (set() if supervised else {"supervisor"})
    failing = [f"{k}: {v['detail']}" for k, v in checked["checks"].items() if not v["ok"] and k not in ignored]
    if failing:
        return dict(ret, result=False, comment=f"{name} cannot be deployed; nothing of it was made: "
                                               + "; ".join(failing))  # fmt: skip
    return dict(ret, comment=f"{name} can be deployed: {checked['checks']['repository']['detail']}")


def _user_exists(user):
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


@_settings_only
def absent(name, database=False, **kwargs):
    """
    Environment ``name`` is gone from this host (``vumi.remove``): its webapps and
    supervisor programs, its nginx site, its folder and its webapps' logs; its
    database and role too with ``database: true``. ``test=True`` lists what would
    go. Refused while a deploy runs, the environment is frozen or a fleet deploy
    holds it.

    .. code-block:: yaml

        retire-topics-foo:
          vumi.absent:
            - name: topics/foo
            - database: true
    """
    ret = _ret(name)
    try:
        res = __salt__["vumi.remove"](name, database=database, test=__opts__["test"], **kwargs)
    except _ERRORS as exc:
        return dict(ret, result=False, comment=str(exc))
    gone = res["would_remove"] if __opts__["test"] else res["removed"]
    kept = f"; kept: {'; '.join(res['kept'])}" if res["kept"] else ""
    if not gone:
        return dict(ret, comment=f"{name} is not on this host{kept}")
    ret["changes"] = {"removed": gone}
    if __opts__["test"]:
        return dict(ret, result=None, comment=f"{len(gone)} things of {name} would be removed{kept}")
    return dict(ret, comment=f"{name} removed ({len(gone)} things){kept}")


@_settings_only
def tree(name, **kwargs):
    """
    The folders of environment ``name`` (``vumi.layout``): made where missing,
    as the environment's user. A symlink planted where a folder belongs, or a
    ``current`` that is not a link into ``releases/``, fails the state before
    anything is touched (whoever planted it would have root follow it).

    name
        The environment.
    """
    ret = _ret(name)
    try:
        res = __salt__["vumi.layout"](name, test=__opts__["test"], **kwargs)
    except _ERRORS as exc:
        return dict(ret, result=False, comment=str(exc))
    if not res["created"]:
        return dict(ret, comment=f"the folders of {name} are in place in {res['path']}")
    ret["changes"] = {"created": res["created"]}
    if __opts__["test"]:
        return dict(ret, result=None, comment=f"{len(res['created'])} folders of {name} would be created")
    return dict(ret, comment=f"{len(res['created'])} folders of {name} created in {res['path']}")


@_settings_only
def deployed(name, revision=None, supervised=False, **kwargs):
    """
    Make environment ``name`` current at the wanted revision: the branch's
    latest commit (found with ``git ls-remote``, which changes nothing), or
    ``revision``. Nothing happens when the current release already is that
    revision with an intact virtualenv and unchanged requirements; otherwise
    a new release is deployed and ``changes`` names the old and new release
    and revision.

    name
        The environment (by default also the branch).
    revision
        Pin to a commit or tag (default: pillar ``revision``, else the branch tip).
    supervised
        The ports are restarted after the deploy (the SLS's ``vumi.webapp_running``
        watches it): supervisord must answer before the switch, else the state fails
        with ``current`` untouched (the old code would go on serving a new ``current``).
    kwargs
        Settings overriding pillar (``repo_url``, ``base_dir``, ...).
    """
    ret = _ret(name)
    try:
        cfg = __salt__["vumi.settings"](name, **kwargs)
        if cfg["health_check"] is None:
            # webapps to protect: by default the switch waits for the new release to answer
            kwargs["health_check"] = bool(cfg["ports"])
        have = __salt__["vumi.current"](name, **kwargs)
        want = __salt__["vumi.remote_revision"](name, revision=revision, **kwargs)
    except _ERRORS as exc:
        return dict(ret, result=False, comment=str(exc))
    old = {"release": have["release"], "revision": have.get("revision")} if have else {}
    problems = []
    if not have:
        problems.append("nothing is deployed yet")
    else:
        if want is None or have.get("revision") != want:
            problems.append(f"current is at {str(have.get('revision'))[:12]}, wanted {str(want)[:12]}")
        if not have["virtualenv_ok"]:
            problems.append("the virtualenv is not intact")
        if have["requirements_changed"]:
            problems.append("the requirements changed")
        if have.get("settings_changed"):
            problems.append("the settings in pillar changed")
    held = (have or {}).get("rolled_back_from")
    if problems and held and want == held["revision"] and (revision or cfg["revision"]) == held["pinned"]:
        # rolled back from this very commit: wait for the branch (or the pin) to move on
        ret["comment"] = (
            f"{name} was rolled back from {want[:12]} (release {held['release']}); not deploying it again "
            f"until the branch moves to another commit or the pin changes (current: release {have['release']})"
        )
        return ret
    if not problems:
        ret["comment"] = f"{name} is at {want[:12]} (release {have['release']})"
        return ret
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = {
            "release": {"old": old.get("release"), "new": "a new release"},
            "revision": {"old": old.get("revision"), "new": want or revision},
        }
        ret["comment"] = f"{name} would be deployed: {'; '.join(problems)}"
        try:  # the pre-flight: what would stop the real run
            checked = __salt__["vumi.check"](name, **kwargs)
        except _ERRORS as exc:
            checked = {"ok": False, "checks": {"check": {"ok": False, "detail": str(exc)}}}
        # supervisord is not the deploy's: the same run may install it before the webapps start
        failing = [f"{k}: {v['detail']}" for k, v in checked["checks"].items() if not v["ok"] and k != "supervisor"]
        if failing:
            ret["result"] = False
            ret["comment"] += f"; but the deploy would fail: {'; '.join(failing)}"
        return ret
    try:
        if supervised and cfg["ports"]:  # what the restart after the switch needs, before the switch
            __salt__["vumi.webapp_status"](name, **kwargs)
        res = __salt__["vumi.deploy"](name, revision=revision, **kwargs)
    except vumi_errors.StageFailed as exc:
        # current did not move; what did change is the half-built release, kept aside to look at
        kept = exc.facts.get("kept")
        kept = {"failed_release": {"old": None, "new": kept}} if kept else {}
        return dict(ret, result=False, comment=str(exc), changes=kept)
    except _ERRORS as exc:
        return dict(ret, result=False, comment=str(exc))
    ret["changes"] = {
        "release": {"old": old.get("release"), "new": res["release"]},
        "revision": {"old": old.get("revision"), "new": res["revision"]},
    }
    hooks = [k for k in res.get("timings", {}) if k.startswith(("before_publish[", "after_publish["))]
    if hooks:  # what ran in the new release (migrate, collectstatic...), with their seconds
        ret["changes"]["hooks"] = {"old": None, "new": {k: res["timings"][k] for k in hooks}}
    ret["comment"] = f"{name} deployed release {res['release']} at {res['revision'][:12]} ({'; '.join(problems)})"
    if res.get("health"):
        ret["comment"] += f"; health check passed: {res['health']['evidence']}"
    return ret


def _status(name, ports, kwargs):
    """The configured (or given) ports and the webapp status of each."""
    if ports is not None:
        kwargs = dict(kwargs, ports=ports)
    # pillar's ports, and those vumi.start_webapp started beyond them (kept: a state does not forget them)
    status = __salt__["vumi.webapp_status"](name, **kwargs)
    return {port: row for port, row in status.items() if row["configured"] or row["extra"]}


def _processes(ret, name, kwargs, stale):
    """The process types onto the current release (``stale``: only those not running it), or predicted."""
    if not __salt__["vumi.settings"](name, **kwargs)["processes"]:
        return ""
    if __opts__["test"]:
        try:
            rows = __salt__["vumi.process_status"](name, **kwargs)
        except _ERRORS:
            rows = {}
        todo = sorted({r["process"] for r in rows.values() if not stale or not (r["running"] and r["current"])})
        if not rows:
            todo = sorted(__salt__["vumi.settings"](name, **kwargs)["processes"])
        if todo:
            ret["result"] = None
            ret["changes"]["processes"] = {"old": None, "new": todo}
            return f"processes {', '.join(todo)} would be restarted"
        return ""
    try:
        done = __salt__["vumi.restart_processes"](name, stale=stale, **kwargs)
    except _ERRORS as exc:
        ret["result"] = False
        return f"processes could not be restarted: {exc}"
    if done:
        ret["changes"]["processes"] = {"old": None, "new": done}
        return f"processes {', '.join(done)} restarted on the current release"
    return ""


def _act(ret, todo, action, kwargs, verb):
    """Run ``action`` on each (port, old state) in ``todo``, or predict it; return a comment."""
    if not todo:
        return ""
    ports = ", ".join(str(port) for port, _ in todo)
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"].update({str(port): {"old": old, "new": verb} for port, old in todo})
        return f"ports {ports} would be {verb}"
    for index, (port, old) in enumerate(todo):  # one port at a time: the others keep serving
        try:
            res = __salt__[action](ret["name"], port, **kwargs)
        except _ERRORS as exc:
            # the roll stops here: the ports after this one keep running what they ran
            ret["result"] = False
            left = ", ".join(str(p) for p, _ in todo[index + 1 :]) or "none"
            return f"port {port} could not be {verb}: {exc}\nports left as they were: {left}"
        new = "stopped" if verb == "stopped" else f"running release {res['release']} (pid {res['pid']})"
        ret["changes"][str(port)] = {"old": old, "new": new}
    return f"ports {ports} {verb}"


def _programs(ret, name, ports, kwargs):
    """The supervisor program file: written (or predicted) when it is not what the settings say."""
    if ports is not None:
        kwargs = dict(kwargs, ports=ports)
    try:
        res = __salt__["vumi.webapp_programs"](name, test=__opts__["test"], **kwargs)
    except _ERRORS:
        if not __opts__["test"]:
            raise
        res = {"file": "the program file", "changed": True}  # no release yet: the deploy comes first
    if not res["changed"]:
        return ""
    ret["changes"]["programs"] = {"old": None, "new": res["file"]}
    rolled = f" (programs {', '.join(res['programs'])}, one at a time)" if res.get("programs") else ""
    if __opts__["test"]:
        ret["result"] = None
        return f"{res['file']} would be written{rolled}"
    return f"{res['file']} written and applied{rolled}"


def _describe(status):
    if status["running"]:
        return f"running release {status['release']} (pid {status['pid']})"
    return "stopped"


def _watched():
    """The returns, so far in this run, of the states this one watches."""
    low, running = globals().get("__low__") or {}, globals().get("__running__") or {}
    ids = {next(iter(w.values())) for w in low.get("watch") or [] if isinstance(w, dict) and w}
    return [ran for ran in running.values() if ran.get("__id__") in ids]


def _watched_changes():
    """
    In a dry run: whether a state this one watches predicts changes. Its real run
    makes a new release current, so every running port is then restarted.
    """
    return any(ran.get("changes") for ran in _watched())


@_settings_only
def webapp_running(name, ports=None, **kwargs):
    """
    Keep the webapp of environment ``name`` running on ``ports`` (default:
    pillar ``ports``): start the ports that are not running, restart the
    ports still running a release other than the current one. With ``watch``
    on a ``vumi.deployed`` state, every port is restarted when it deployed.
    A changed program file (command, environment) is applied one program at a
    time, each port answering before the next (see ``vumi.webapp_programs``), and
    reported so. The process types (pillar ``processes``) not running the current
    release are restarted after the ports; ports ``vumi.start_webapp`` started
    beyond pillar's are kept, and named in the comment. A dry
    run predicts the same ports and verbs as the real run.

    name
        The environment.
    ports
        The ports to run, each its own process.
    """
    if ports is not None:  # the ports named here are the configured ones for every call below
        kwargs = dict(kwargs, ports=ports)
    ret = _ret(name)
    test = __opts__["test"]
    comments = []
    replaced = False
    try:
        status = before = _status(name, ports, kwargs)
        if status or __salt__["vumi.settings"](name, **kwargs)["processes"]:
            comments.append(_programs(ret, name, ports, kwargs))
            replaced = "programs" in ret["changes"]
            if replaced and not test:
                status = _status(name, ports, kwargs)  # a new or replaced group started its webapps
    except _ERRORS as exc:
        return dict(ret, result=False, comment=str(exc))
    was_up = {p for p, s in before.items() if s["running"]}
    if test:  # what the real run will find: a replaced group, or a new release current
        reloaded = was_up if replaced else set()
        stale = was_up - reloaded if _watched_changes() else {p for p in was_up if not before[p]["current"]}
    else:
        reloaded = {p for p in was_up if status[p]["running"] and status[p]["pid"] != before[p]["pid"]}
        stale = {p for p in was_up - reloaded if status[p]["running"] and not status[p]["current"]}
    starts = [p for p, s in status.items() if p not in reloaded | stale and (
        p not in was_up or not s["running"] or (s["current"] and not s["answers"]))]  # fmt: skip
    for todo, action, verb in (
        ([(p, _describe(before[p])) for p in starts], "vumi.start_webapp", "started"),
        # supervisor restarted these with the group: waited for until they answer
        ([(p, _describe(before[p])) for p in status if p in reloaded], "vumi.start_webapp", "restarted"),
        ([(p, _describe(before[p])) for p in status if p in stale], "vumi.restart_webapp", "restarted"),
    ):
        comments.append(_act(ret, todo, action, kwargs, verb))
        if ret["result"] is False:
            break
    if ret["result"] is not False:  # a dry run's watched deploy will restart every type
        comments.append(_processes(ret, name, kwargs, stale=not (test and _watched_changes())))
    extra = [p for p, s in status.items() if s["extra"]]
    if extra:
        comments.append(f"ports {', '.join(map(str, extra))} run too (started by vumi.start_webapp, not in pillar "
                        "ports): kept until vumi.stop_webapp")  # fmt: skip
    if not status:
        ret["comment"] = "; ".join(c for c in comments if c) or (
            f"{name} has no webapp ports configured (pillar ports): nothing to run"
        )
        return ret
    ret["comment"] = "; ".join(c for c in comments if c) or (
        f"webapp of {name} runs the current release on ports {', '.join(map(str, status))}"
    )
    return ret


@_settings_only
def cron_jobs(name, **kwargs):
    """
    The deploy user's crontab holds environment ``name``'s jobs (pillar ``cron``) and no
    other entry of it: made, changed in place, or removed when pillar drops them.
    """
    ret = _ret(name)
    try:
        changes = __salt__["vumi.cron_jobs"](name, test=__opts__["test"], **kwargs)
    except _ERRORS as exc:
        return dict(ret, result=False, comment=str(exc))
    ret["changes"] = changes
    if not changes:
        return dict(ret, comment=f"the crontab holds the jobs of {name}")
    verb = "would be" if __opts__["test"] else "were"
    ret["result"] = None if __opts__["test"] else True
    ret["comment"] = f"cron jobs {', '.join(sorted(changes))} of {name} {verb} written or removed"
    return ret


@_settings_only
def webapp_dead(name, ports=None, **kwargs):
    """
    Stop the webapp of environment ``name`` on ``ports`` (default: pillar ``ports``).
    """
    if ports is not None:  # the ports named here are the configured ones for every call below
        kwargs = dict(kwargs, ports=ports)
    ret = _ret(name)
    try:
        status = _status(name, ports, kwargs)
    except _ERRORS as exc:
        return dict(ret, result=False, comment=str(exc))
    todo = [(p, _describe(s)) for p, s in status.items() if s["running"]]
    ret["comment"] = _act(ret, todo, "vumi.stop_webapp", kwargs, "stopped") or (
        f"webapp of {name} is not running on ports {', '.join(map(str, status))}"
    )
    return ret


@_settings_only
def mod_watch(name, sfun=None, ports=None, **kwargs):
    """
    React to ``watch``: a watched ``vumi.deployed`` that changed means a new
    release is current, so every port of ``webapp_running`` (and any started
    beyond pillar's) is restarted, one at a time, then every process type.
    """
    if ports is not None:  # the ports named here are the configured ones for every call below
        kwargs = dict(kwargs, ports=ports)
    ret = _ret(name)
    if sfun != "webapp_running":
        return dict(ret, result=False, comment=f"vumi.{sfun} does not support watch")
    try:
        status = _status(name, ports, kwargs)
    except _ERRORS as exc:
        return dict(ret, result=False, comment=str(exc))
    todo = [(p, _describe(s)) for p, s in status.items()]
    ret["comment"] = _act(ret, todo, "vumi.restart_webapp", kwargs, "restarted")
    if ret["result"] is not False:
        ret["comment"] = "; ".join(c for c in (ret["comment"], _processes(ret, name, kwargs, stale=False)) if c)
    switched = _switched_to()
    if ret["result"] is False and switched:  # the switch happened: say so, not only what failed after it
        ret["comment"] = f"{name} switched to {switched}; {ret['comment']}"
    return ret


def _switched_to():
    """The release a watched ``vumi.deployed`` of this run made current ("release R at C"), or None."""
    for ran in _watched():
        release = (ran.get("changes") or {}).get("release")
        if release:
            revision = ((ran["changes"].get("revision") or {}).get("new") or "")[:12]
            return f"release {release['new']} at {revision}"
    return None
