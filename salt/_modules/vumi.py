"""
Deploy a Python web application from git into timestamped releases.

The Salt equivalent of the Fabric deploy that Vumi's operators used: each git
branch is an environment with its own tree under ``<base_dir>/<app>/<env>``::

    releases/<YYYYmmdd_HHMMSS>/     one release: <app>/ (the code), ve, REVISION, release.json
    shared/logs/  shared/tmp/cache/pip/  shared/tmp/pids/  shared/repositories/<app>/
    shared/virtualenvs/<hash>/      virtualenvs, shared by releases with the same requirements
    current -> releases/<latest>    what the webapp runs from
    history.log                     one JSON line per deploy, update, rollback and failure

A branch with ``/`` in its name (``topics/foo``) lives in the folder
``topics~foo``: git forbids ``~`` in branch names, so the mapping is reversible.

Settings come from pillar ``vumi`` (defaults) and ``vumi:environments:<env>``
(overrides), then keyword arguments; :py:func:`settings` shows the result.

This file is the public face: each function checks its arguments and hands
over to the helpers in ``salt/_utils/vumi_*.py``, one file per concern
(settings, paths, the deploy's stages, git, virtualenvs, webapps, history),
installed as plain modules by ``pip install vumi-salt`` or synced to
``<extmods>/utils`` by ``saltutil.sync_all``.

:depends: git
"""

import contextlib
import json
import logging
import os
import shlex

import salt.utils.path
from salt.exceptions import CommandExecutionError, SaltInvocationError

# The helpers (salt/_utils): installed beside Salt (pip install vumi-salt), or synced to
# <extmods>/utils, which Salt's loader puts on sys.path while it loads this module
try:
    import vumi_check
    import vumi_commands
    import vumi_cron
    import vumi_environment
    import vumi_errors
    import vumi_events
    import vumi_files
    import vumi_freeze
    import vumi_git
    import vumi_history
    import vumi_layout
    import vumi_lock
    import vumi_manifest
    import vumi_notify
    import vumi_paths
    import vumi_pipeline
    import vumi_privileges
    import vumi_processes
    import vumi_releases
    import vumi_remove
    import vumi_settings
    import vumi_supervisor
    import vumi_version
    import vumi_virtualenv
    import vumi_webapp
except ImportError as exc:
    _MISSING = str(exc)
else:
    _MISSING = None
    DEFAULTS = vumi_settings.DEFAULTS

log = logging.getLogger(__name__)

__virtualname__ = "vumi"


def __virtual__():
    if _MISSING is not None:
        return (False, f"the vumi module's helpers are missing ({_MISSING}): pip install vumi-salt, "
                       "or saltutil.sync_all from a master serving salt/_utils")  # fmt: skip
    if not salt.utils.path.which("git"):
        return (False, "the vumi module needs the git binary on PATH")
    return __virtualname__


def version():
    """
    This bundle's version on this minion (the fleet runner refuses hosts that
    differ), the folder its module was loaded from, and ``formula``: the folder to
    add to ``file_roots`` when the bundle was installed with pip (None when it was
    synced from a master, which serves the formula itself).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.version
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    formula = here if os.path.isfile(os.path.join(here, "vumi", "init.sls")) else None
    return {"version": vumi_version.VERSION, "module": os.path.abspath(__file__), "formula": formula}


# --------------------------------------------------------------------------
# Settings and paths
# --------------------------------------------------------------------------


def settings(environment, vumi_pillar=None, show_secrets=False, **kwargs):
    """
    The settings of an environment: ``vumi`` pillar (and minion options) merged
    onto the defaults, then ``vumi:environments:<branch>``, then keyword
    arguments.

    environment
        The environment (by default also its git branch: ``branch=`` names another).
    show_secrets
        The values of ``env`` and ``settings`` whose name looks secret
        (``PASSWORD``, ``SECRET``, ``TOKEN``, ``KEY``, ``CREDENTIAL``, ``PRIVATE``)
        or is listed in ``secret_env``, and passwords in URLs, are masked unless
        this is true; the others are shown.
    vumi_pillar
        A ``vumi`` pillar mapping to read instead of this host's pillar. Under
        salt-ssh a module called on its own sees no pillar, so the bundle's
        wrapper (``salt/_wrapper/vumi.py``) passes the controller's; every
        function accepts it.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.settings staging
    """
    cfg = _settings(environment, vumi_pillar, kwargs)
    return cfg if show_secrets else vumi_settings.masked(cfg)


def settings_problem(environment, vumi_pillar=None, **kwargs):
    """
    What is wrong with the settings of an environment, as ``vumi.settings`` would
    raise it (an unknown key and its closest known one, a bad value), or ``""``
    when they are valid. For SLS files, which turn it into a failing state
    rather than an error of their own rendering.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.settings_problem staging
    """
    try:
        _settings(environment, vumi_pillar, kwargs)
    except SaltInvocationError as exc:
        return str(exc)
    return ""


def _settings(environment, vumi_pillar, kwargs):
    pillar = _vumi_pillar(vumi_pillar)
    return vumi_settings.merge(environment, pillar, __opts__.get("vumi"), kwargs)


def env_dirname(env):
    """
    The folder name of an environment: ``/`` becomes ``~`` (reversible, since
    git forbids ``~`` in branch names).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.env_dirname topics/foo
    """
    return vumi_settings.env_dirname(env)


def paths(environment, **kwargs):
    """
    The folders and files of an environment: ``tree`` lists the folders
    ``layout`` makes; ``planted`` lists those of them (and ``failed``, the
    cached repository) that are symlinks, which nothing here will follow.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.paths topics/foo
    """
    found = _context(environment, kwargs)[1]
    tree = found.tree()
    planted = [p for p in tree + [found.failed, found.repo] if os.path.islink(p)]
    return dict({k: v for k, v in vars(found).items() if not k.startswith("_")}, tree=tree, planted=planted)


def _vumi_pillar(given):
    """Pillar ``vumi``: the one a caller passed (``vumi_pillar``: the SLS's, a runner's), else this minion's."""
    return __pillar__.get("vumi") if given is None else given


def _context(environment, kwargs):
    kwargs = dict(kwargs)
    cfg = _settings(environment, kwargs.pop("vumi_pillar", None), kwargs)
    return cfg, vumi_paths.Paths(cfg)


def _as_user(cfg, found, fn, *args, make_root=False):
    """
    ``fn(*args)`` as the environment's deploy user (vumi_privileges): root acts on no
    path that user can write. ``make_root``: first, root makes ``<base_dir>/<app>`` (root's)
    and the environment's folder (the user's), as a deploy or a layout needs.
    """
    user = vumi_privileges.dropping(cfg)
    if user is not None and make_root:
        vumi_privileges.ensure_env_root(cfg, found, user)
    return vumi_privileges.as_user(cfg, __salt__, __opts__, fn, *args)


def _read_as_user(cfg, fn, *args, timeout=None):
    """
    ``fn(*args)`` as the deploy user, for what only reads the user's tree (manifests,
    the history, locks, the requirements) or asks the remote with the user's
    credentials: root opens nothing the user can write, runs nothing of the user's
    with its terminal, and waits at most ``timeout`` seconds (default: READ_TIMEOUT).
    """
    timeout = vumi_privileges.READ_TIMEOUT if timeout is None else timeout
    return vumi_privileges.as_user(cfg, __salt__, None, fn, *args, timeout=timeout)


#: ``git ls-remote`` may wait on a slow remote: longer than a local read, still bounded
REMOTE_TIMEOUT = 180


def _run_deploy(fn, d):
    res = _as_user(d.cfg, d.paths, fn, d, make_root=True)
    if res.get("action") != "prepare":
        _deployed(d.cfg, res["release"], res["revision"])
    return res


def _deployed(cfg, release, revision):
    """
    Root's own record (in Salt's cache, never the user's tree) of what is current
    here, for the ``vumi`` grain: ``salt -G 'vumi:staging:revision:3f2a*'``.
    """
    if not (isinstance(release, str) and vumi_settings.RELEASE_RE.match(release)):
        log.warning("not recorded for the vumi grain: %r is not a release name", release)
        return
    if revision is not None and not (isinstance(revision, str) and vumi_settings.SHA_RE.match(revision)):
        revision = None  # what the child read of the user's tree: a commit id, or nothing
    _record(cfg, release=release, revision=revision)


def _record(cfg, **fields):
    """``fields`` into root's record of the environment, and the grains refreshed."""
    folder = os.path.join(__opts__.get("cachedir") or "", "vumi")
    path = os.path.join(folder, "deployed.json")
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
        found = vumi_files.read_json(path, 1 << 20) or {}  # root's own file, read to a bound all the same
        found = found if isinstance(found, dict) else {}
        found[cfg["environment"]] = dict(found.get(cfg["environment"]) or {}, **fields)
        vumi_files.write_atomic(path, json.dumps(found, sort_keys=True))
    except OSError as exc:  # the grain is a convenience; the deploy itself is done
        log.warning("could not record the deployed release for the vumi grain in %s: %s", path, exc)
        return
    if not vumi_events.event_bus_up(__opts__):
        return  # masterless with no minion daemon: no one to tell (the refresh would wait 1 s for its bus)
    with contextlib.suppress(Exception):
        __salt__["saltutil.refresh_grains"]()  # the pillar refresh brings the grains to the master


def _deploy(environment, kwargs, revision=None, release=None, run_once=True, hold=None, run=None):
    cfg, found = _context(environment, kwargs)
    who = vumi_history.who(__opts__, kwargs)
    if run is not None:
        who["run"] = _run_id(run)
    return vumi_pipeline.Deploy(__salt__, __opts__, cfg, found, revision, release, run_once, who, hold)


# --------------------------------------------------------------------------
# Releases: what is there
# --------------------------------------------------------------------------


def releases(environment, **kwargs):
    """
    The releases of an environment, oldest first, with their revision, time
    and state (``complete``, ``incomplete``) and which one is current.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.releases staging
    """
    cfg, found = _context(environment, kwargs)
    return _read_as_user(cfg, vumi_releases.list_releases, found)


def current(environment, **kwargs):
    """
    The current release of an environment (``None`` when nothing is deployed)
    with its manifest, whether its virtualenv is intact and whether its
    requirements changed since the virtualenv was built.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.current staging
    """
    cfg, found = _context(environment, kwargs)
    return _read_as_user(cfg, vumi_releases.describe_current, __salt__, cfg, found)


def remote_revision(environment, revision=None, **kwargs):
    """
    The commit the environment should be at, found without changing anything:
    a full commit id pin as it is, else ``git ls-remote`` of the branch (or
    of the pinned tag), else the pin resolved in the cached clone.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.remote_revision staging
    """
    cfg, found = _context(environment, kwargs)
    pin = revision if revision is not None else cfg["revision"]
    return _read_as_user(cfg, vumi_git.remote_revision, __salt__, cfg, found, pin, timeout=REMOTE_TIMEOUT)


# --------------------------------------------------------------------------
# The deploy: vumi_pipeline runs the stages
# --------------------------------------------------------------------------


def _run_id(run):
    if not isinstance(run, str) or not run.replace("_", "").isalnum() or len(run) > 64:
        raise SaltInvocationError(f"invalid run {run!r}: the id of a fleet run (salt-run vumi.deploy)")
    return run


def prepare(environment, revision=None, release=None, run_once=True, hold=None, once_on=None, run=None, **kwargs):
    """
    Build a complete release without making it current: layout, fetch, cut
    release, link shared folders, settings, virtualenv, ``before_publish``
    hooks, manifest, and the health check of one webapp of it on a spare
    port (the ``vumi.deployed`` state's default: on when the environment has
    ports; ``health_check`` says otherwise). Returns its name.

    environment
        The environment (by default also its git branch: ``branch=`` names another).
    revision
        An exact commit or tag instead of the branch's latest commit.
    release
        The release's name (``YYYYmmdd_HHMMSS``); by default the time now, in UTC.
        A given name (one for a whole fleet) must sort after every release name
        used here before, or the prepare fails.
    run_once
        Whether this host runs the hooks marked ``once`` (default yes).
    once_on
        A minion id: the host of a fleet deploy that runs the hooks marked
        ``once`` (this host runs them if it is that one; overrides ``run_once``).
    hold
        Seconds: from now, every deploy of the environment but this fleet
        deploy's (``prepare``/``publish`` of ``release`` with ``hold``) is refused,
        naming it, until ``vumi.unhold`` or the time is up (an orchestration that
        died does not hold the host for ever).
    run
        The id of the fleet run (``salt-run vumi.deploy``) this is part of: the
        hold and the history name it, and its heartbeats (``vumi.renew``) extend
        the hold.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.prepare staging
    """
    d = _deploy(environment, kwargs, revision, release, _runs_once(run_once, once_on), hold, run)
    if d.cfg["health_check"] is None:  # the state's default, for the fleet too
        d.cfg["health_check"] = bool(d.cfg["ports"])
    return _run_deploy(vumi_pipeline.prepare, d)


def _runs_once(run_once, once_on):
    if once_on is None:
        return run_once
    if not isinstance(once_on, str) or not once_on:
        raise SaltInvocationError(f"invalid once_on {once_on!r}: the minion id of the host that runs them")
    return once_on == __opts__.get("id")


def publish(environment, release, run_once=True, hold=None, once_on=None, run=None, **kwargs):
    """
    Make a prepared release current (one atomic rename of a symlink), run the
    ``after_publish`` hooks, then remove the releases beyond ``keep_releases``.
    A release that sorts before the current one is refused (a newer deploy
    went live meanwhile).

    run_once, once_on
        Whether this host runs the ``after_publish`` hooks marked ``once`` (see ``vumi.prepare``).
    hold
        Seconds: the fleet deploy of ``release`` (see ``vumi.prepare``) renews its
        hold; without it, a held environment refuses the publish.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.publish staging 20261126_153000
    """
    d = _deploy(environment, kwargs, release=release, run_once=_runs_once(run_once, once_on), hold=hold, run=run)
    return _run_deploy(vumi_pipeline.publish, d)


def revert(environment, release, **kwargs):
    """
    Undo a fleet deploy's publish of ``release`` here: when ``release`` is
    current, the release that was current before it is current again (as
    ``vumi.rollback`` does, without restarting anything); otherwise nothing
    changes. The fleet deploy then restarts the webapps it had restarted.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.revert staging 20261126_153000
    """
    cfg, found = _context(environment, kwargs)
    who = vumi_history.who(__opts__, kwargs)
    res = _as_user(cfg, found, vumi_releases.revert, cfg, found, release, who)
    if res["reverted"]:
        _deployed(cfg, res["release"], res["revision"])
    return res


#: what the fleet runner calls through :py:func:`fleet_step`
FLEET_STEPS = (
    "remote_revision",
    "current",
    "prepare",
    "publish",
    "revert",
    "discard",
    "unhold",
    "renew",
    "serving",
    "settle",
    "check",
)


def fleet_step(step, environment, *args, **kwargs):
    """
    What the fleet runner (``salt-run vumi.deploy``) calls on each host:
    ``vumi.<step>`` (one of ``FLEET_STEPS``) and its result; or, when the bundle
    names what went wrong (locked, held, busy, a stage or the health check
    failed), that error as data, ``{"error": {"kind": "Held", "message": ...,
    <facts>}}``, with retcode 1: the runner acts on its kind, not its words.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.fleet_step prepare staging release=20261126_153000
    """
    if step not in FLEET_STEPS:
        raise SaltInvocationError(f"invalid step {step!r}: one of {', '.join(FLEET_STEPS)}")
    try:
        return globals()[step](environment, *args, **kwargs)
    except vumi_errors.VumiError as exc:
        __context__["retcode"] = 1
        return {"error": vumi_errors.as_data(exc)}


def held(environment, **kwargs):
    """
    The fleet deploy holding an environment (its release, who, job, since and
    until when), or None.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.held staging
    """
    cfg, found = _context(environment, kwargs)
    return _read_as_user(cfg, vumi_freeze.held, found)


def unhold(environment, release=None, **kwargs):
    """
    End a fleet deploy's hold (``release``: only if that release's deploy holds
    it). The orchestration ends its own; an operator may end one whose
    orchestration died instead of waiting for it to lapse.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.unhold staging
    """
    cfg, found = _context(environment, kwargs)
    if release is not None:
        found.release(release)  # a bad name fails before anything else
    return {"was": _as_user(cfg, found, vumi_freeze.unhold, cfg, found, release)}


def renew(environment, run, hold, **kwargs):
    """
    The heartbeat of fleet run ``run``: the hold it has here lasts ``hold``
    seconds from now. Nothing changes when another run (or none) holds the
    environment. Returns the hold renewed, or None.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.renew staging 20261206115011_123456 60
    """
    cfg, found = _context(environment, kwargs)
    if not os.path.isdir(found.root):
        return None
    return _as_user(cfg, found, vumi_freeze.renew, cfg, found, _run_id(run), hold)


def serving(environment, **kwargs):
    """
    What this host serves, as ``salt-run vumi.status`` and ``vumi.recover``
    see it: the current release, per port and per process the release its
    running process has (from its working directory, not where ``current``
    points), its pid and whether it answers, and the fleet run holding the
    environment, if any.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.serving staging
    """
    cfg, found = _context(environment, kwargs)
    if not os.path.isdir(found.root):
        return {"environment": environment, "current": None, "revisions": {}, "ports": {}, "processes": {},
                "held": None}  # fmt: skip
    return dict(_serving(cfg, found), environment=environment)


def _serving(cfg, found):
    """
    The current release, per running port and process its release and pid, each
    release's revision, and the fleet run holding the environment.
    """
    ports = vumi_webapp.status(cfg, found) if cfg["ports"] else {}
    procs = vumi_processes.status(cfg, found) if cfg["processes"] else {}
    now = vumi_manifest.current_release_safe(found)
    named = sorted({now} | {row["release"] for row in [*ports.values(), *procs.values()]} - {None})
    revisions, hold = _read_as_user(cfg, _revisions, found, named)  # one process of the user's for both
    return {
        "current": now,
        "held": hold,
        "revisions": revisions,
        "ports": {p: {k: row[k] for k in ("state", "release", "pid", "answers", "configured")}
                  for p, row in ports.items()},
        "processes": {n: {k: row[k] for k in ("state", "release", "pid")} for n, row in procs.items()},
    }  # fmt: skip


def _revisions(found, names):
    """As the deploy user: the revision of each release named (None: no manifest), and the hold (None: none)."""
    return {name: (vumi_manifest.read_manifest(found, name) or {}).get("revision") for name in names}, vumi_freeze.held(
        found
    )


def settle(environment, release, **kwargs):
    """
    Bring this host back onto ``release`` after a fleet run died (``salt-run
    vumi.recover``): the hold of any run ends, ``current`` is ``release``
    (a named rollback when it was another), and every running port and
    process that runs another release is restarted onto it. Says what it did.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.settle staging 20261126_153000
    """
    cfg, found = _context(environment, kwargs)
    found.release(release)  # a bad name fails before anything else
    res = {"release": release, "unheld": unhold(environment, **kwargs)["was"]}
    res["was"] = vumi_manifest.current_release_safe(found)
    if res["was"] != release:
        res["restarted"] = rollback(environment, release=release, **kwargs)["restarted"]
        return res
    stale = [p for p, row in (vumi_webapp.status(cfg, found) if cfg["ports"] else {}).items()
             if row["running"] and row["configured"] and not row["current"]]  # fmt: skip
    if stale:
        vumi_webapp.cluster(vumi_webapp.restart, cfg, found, stale)  # one port at a time, as a rollback does
    res["restarted"] = stale + (vumi_processes.restart(cfg, found, only_stale=True) if cfg["processes"] else [])
    return res


def deploy(environment, revision=None, run_once=True, **kwargs):
    """
    Deploy the branch (or an exact revision) as a new release and make it
    current, like ``fab deploy:<branch>``: layout; clone or fetch the cached
    repository; cut a timestamped release from it; link the shared folders;
    write pillar's settings; build (or reuse) its virtualenv; run the
    ``before_publish`` hooks in it (migrations, static files); health-check
    it; switch ``current``; run the ``after_publish`` hooks; prune old
    releases. Always cuts a release; the ``vumi.deployed`` state decides
    whether one is needed. Running webapps are not restarted.

    A failure at any step before the switch leaves ``current`` where it was;
    the half-built release is moved to ``failed/`` and the history log says
    why.

    With ``health_check: true`` (the ``vumi.deployed`` state turns it on for
    environments with ports) the switch waits for the new release to answer:
    one webapp of it is started on a spare loopback port, from its own code
    folder and virtualenv, and asked ``GET /`` (any answer below 500 passes:
    the app is up) or, with ``health_path`` set, that path (2xx or 3xx
    passes), for up to ``health_timeout`` seconds (30), then stopped. A
    release that exits, or does not answer, fails the deploy at stage
    ``health`` with the HTTP status or its log's last lines; the running
    webapps are not touched.

    environment
        The environment (by default also its git branch: ``branch=`` names another).
    revision
        An exact commit or tag instead of the branch's latest commit.
    run_once
        Whether this host runs the hooks marked ``once`` (see ``prepare``).
    kwargs
        Any setting, overriding pillar (``repo_url``, ``base_dir``, ...).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.deploy staging
        salt '*' vumi.deploy production revision=3f2a1c9
    """
    return _run_deploy(vumi_pipeline.deploy, _deploy(environment, kwargs, revision, run_once=run_once))


def layout(environment, test=False, **kwargs):
    """
    Create the environment's folders (idempotent), like ``fab layout:<branch>``.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.layout staging
    """
    cfg, found = _context(environment, kwargs)
    if test:
        return vumi_layout.ensure_tree(cfg, found, test=True)
    user = vumi_privileges.dropping(cfg)
    made = user is not None and vumi_privileges.ensure_env_root(cfg, found, user)  # root makes it, for the user
    res = _as_user(cfg, found, vumi_layout.ensure_tree, cfg, found)
    return dict(res, created=[found.root] * made + res["created"])


def update(environment, **kwargs):
    """
    Bring the branch's latest commit live quickly (for small fixes), like ``fab
    update:<branch>``, but never half-done: the commit is cut as a new release
    beside the current one (shared folders, settings, the current virtualenv
    when the requirements did not change, else a new one), then ``current``
    switches to it in one rename. No hooks, no health check, and the webapp is
    not restarted (it runs the release it started from until a restart). Reports
    the old and new release and revision; nothing changes when the branch has
    not moved. ``vumi.rollback`` goes back to the release it replaced.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.update staging
    """
    d = _deploy(environment, kwargs)
    if d.cfg["processes"]:
        vumi_webapp.can_restart(d.cfg)
    res = _as_user(d.cfg, d.paths, vumi_pipeline.update, d)
    if res["changed"]:
        _deployed(d.cfg, res["release"], res["new_revision"])
        if d.cfg["processes"]:  # the webapp keeps its release until restarted; the processes follow the code
            res["processes_restarted"] = vumi_processes.restart(d.cfg, d.paths)
    return res


def create_virtualenv(environment, release=None, **kwargs):
    """
    (Re)build the virtualenv of a release (default: the current one) from its
    requirements file, like ``fab create_virtualenv:<branch>``. With
    ``reuse_virtualenvs`` a virtualenv already built from the same
    requirements is linked instead of built again.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.create_virtualenv staging
    """
    cfg, found = _context(environment, kwargs)
    return _as_user(cfg, found, vumi_virtualenv.rebuild, __salt__, cfg, found, release)


# --------------------------------------------------------------------------
# Commands in a release
# --------------------------------------------------------------------------


def execute(environment, command, release=None, timeout=None, **kwargs):
    """
    Run a shell command in a release's code folder (where ``manage.py`` is)
    with its virtualenv active, like ``fab execute:<branch>,"<command>"``,
    as the deploy user with the release's environment (pillar ``env``). A
    non-zero exit fails the job. Of each of stdout and stderr at most 1 MiB is
    kept (its first 64 KiB and its end, the cut marked); ``truncated`` names
    the streams that were cut.

    command
        A shell line, e.g. ``./manage.py syncdb``.
    release
        Default: the current release.
    timeout
        Seconds the command may run; then it is killed with every process it
        started, and the job fails. Default: no limit (the operator's own call).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.execute production "./manage.py syncdb"
        salt '*' vumi.execute production "./manage.py clearsessions" timeout=600
    """
    cfg, found = _context(environment, kwargs)
    if not isinstance(command, str) or not command.strip() or "\0" in command:
        raise SaltInvocationError(f"invalid command {command!r}")
    timeout = None if timeout is None else vumi_settings.seconds(timeout, "timeout")
    res = _as_user(cfg, found, _execute, cfg, found, command, release, timeout)
    if res["timed_out"]:
        raise CommandExecutionError(
            f"{command!r} did not finish within {timeout:g}s; it was killed with every process it started "
            f"(last output: {vumi_files.output_tail(res)})"
        )
    if res["retcode"] != 0:
        __context__["retcode"] = res["retcode"]
    return {"release": res["release"], "command": command, **{k: res[k] for k in OUTPUT}}


#: what ``execute`` returns of the command's run
OUTPUT = ("stdout", "stderr", "retcode", "truncated")


def _execute(cfg, found, command, release, timeout=None):
    name = vumi_manifest.resolve_release(found, release)
    # the operator's own shell line; at most OUTPUT_LIMIT bytes of each stream are kept
    res = vumi_commands.run_shell(
        command,
        found.code(name),
        vumi_files.runas_user(cfg),
        vumi_environment.for_release(cfg, found, name),
        timeout=timeout,
    )
    return dict(res, release=name)


def managepy(environment, command, release=None, timeout=None, **kwargs):
    """
    Run ``manage.py <command> --settings=<settings_module>`` in a release's
    code folder with its virtualenv, as the Fabric-era fabfile did. A
    non-zero exit fails the job.

    command
        The management command and its arguments, e.g. ``syncdb --noinput``.
    release
        Default: the current release.
    timeout
        Seconds it may run (see ``vumi.execute``).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.managepy production syncdb
        salt '*' vumi.managepy staging "migrate --noinput"
    """
    cfg, found = _context(environment, kwargs)
    if not isinstance(command, str) or not command.strip() or "\0" in command:
        raise SaltInvocationError(f"invalid manage.py command {command!r}")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise SaltInvocationError(f"invalid manage.py command {command!r}: {exc}") from None
    # each word quoted: the command is arguments to manage.py, not a shell line; --settings
    # only when the release has that module (else the project's own default stands)
    module = vumi_environment.release_settings_module(cfg, found, vumi_manifest.resolve_release(found, release))
    line = shlex.join(["python", "manage.py", *words, *([f"--settings={module}"] if module else [])])
    return execute(environment, line, release=release, timeout=timeout, **kwargs)


# --------------------------------------------------------------------------
# Rollback and removal
# --------------------------------------------------------------------------


def rollback(environment, release=None, restart=True, force=False, dry_run=False, **kwargs):
    """
    Point ``current`` back at the release that was current before it (from the
    history log, not by time), or at a named release, then restart the running
    webapps onto it, one port at a time (each serving again before the next
    stops). ``vumi.deployed`` does not deploy the revision rolled back from
    again until the branch moves to another commit or the pin changes.

    release
        A release to go back to, instead of the previous one.
    restart
        False: only switch ``current``; the webapps keep running what they run.
    force
        Roll back across releases whose hooks migrated the database (refused
        otherwise, naming the migrations: the schema stays migrated).
    dry_run
        Change nothing: the release it would go back to, and the migrating
        releases it would cross.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.rollback staging
        salt '*' vumi.rollback staging 20261126_153000
        salt '*' vumi.rollback staging restart=False
    """
    cfg, found = _context(environment, kwargs)
    _booleans(restart=restart, force=force, dry_run=dry_run)
    if dry_run:
        return _read_as_user(cfg, vumi_releases.rollback_preview, cfg, found, release)
    who = vumi_history.who(__opts__, kwargs)
    if restart:
        _can_roll_back(cfg, found, release)
    # the switch as the user; the restart through supervisor, root's part
    res = _as_user(cfg, found, vumi_releases.rollback, cfg, found, release, who, force)
    _deployed(cfg, res["release"], res["revision"])
    if restart:
        res["restarted"] = _restart_rolled_back(cfg, found, res)
    _notify_rollback(cfg, res, who)
    return res


def _can_roll_back(cfg, found, release):
    """Before a rollback that restarts: the operator's mistakes first, then supervisord, then the switch."""
    if cfg["ports"] or cfg["processes"]:
        _read_as_user(cfg, vumi_releases.rollback_plan, cfg, found, release)
        vumi_webapp.can_restart(cfg)


def _booleans(**values):
    for name, value in values.items():
        if not isinstance(value, bool):
            raise SaltInvocationError(f"invalid {name} {value!r}: must be true or false")


def _notify_rollback(cfg, res, who):
    vumi_notify.send(__salt__["http.query"], cfg["notify"], "rollback", {
        "environment": cfg["environment"], "host": __opts__.get("id"), "release": res["release"],
        "revision": res["revision"], "user": who.get("user"), "outcome": f"rolled back (was {res['previous']})",
    })  # fmt: skip


def _restart_rolled_back(cfg, found, res):
    """The running ports onto the release rolled back to; a failure says the switch happened, and what the roll left."""
    try:
        ports = vumi_webapp.restart_running(cfg, found)
        return ports + vumi_processes.restart(cfg, found)
    except CommandExecutionError as exc:
        kind = type(exc) if isinstance(exc, vumi_errors.VumiError) else vumi_errors.VumiError
        raise kind(
            f"rolled back: current is release {res['release']} (was {res['previous']}), but restarting the "
            f"running ports and processes onto it failed: {exc}",
            **dict(getattr(exc, "facts", {}), release=res["release"], previous=res["previous"]),
        ) from None


def history(environment, limit=10, **kwargs):
    """
    The environment's last ``limit`` deploys, updates, rollbacks, failures,
    discards and locks (default 10, at most 1000), newest first: time, who
    (user, minion, Salt job, fleet run), release, commit and its subject,
    outcome and duration in seconds. Read from ``history.log`` as the deploy user.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.history staging 5
        salt-run vumi.history staging 'web*'       # the fleet's, as a table
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= 1000:
        raise SaltInvocationError(f"invalid limit {limit!r}: a number of entries, 1 to 1000")
    cfg, found = _context(environment, kwargs)
    if not os.path.isdir(found.root):
        return []
    return _read_as_user(cfg, vumi_releases.history_rows, found, limit)


def cleanup(environment, limit=None, **kwargs):
    """
    Remove all but the newest ``limit`` releases (default ``keep_releases``);
    the current release is always kept, in addition if it is older. Releases
    prepared (``vumi.prepare``) but never published are removed first, whatever
    their age: a fleet deploy that did not finish left them. Shared
    virtualenvs no longer used by a kept release are removed too.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.cleanup staging limit=3
    """
    cfg, found = _context(environment, kwargs)
    return _as_user(cfg, found, vumi_releases.cleanup, cfg, found, limit)


def discard(environment, release, **kwargs):
    """
    Remove one prepared release that is not to be published (a fleet deploy
    failed on another host). Never the current release, nor one that has been
    current (that is cleanup's and rollback's business). A release that is not
    there (never prepared here, or already moved to ``failed/``) is no error:
    the orchestration discards on every host. Its virtualenv stays for a
    retry to reuse; ``vumi.cleanup`` removes it once no release uses it.

    environment
        The environment (by default also its git branch: ``branch=`` names another).
    release
        The release's name, as ``vumi.prepare`` returned it.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.discard staging 20261126_153000
    """
    cfg, found = _context(environment, kwargs)
    return _as_user(cfg, found, vumi_releases.discard, cfg, found, release)


def remove(environment, database=False, test=False, **kwargs):
    """
    Retire an environment from this host: its webapps and processes stopped and their
    supervisor programs dropped, its deploy user's crontab entries removed, its nginx site deleted (nginx reloaded when the SLS manages
    its service), its folder ``<base_dir>/<app>/<env>`` (releases, virtualenvs,
    the cached clone, shared files, the history) and its webapps' logs removed.
    Its PostgreSQL database and role are dropped only with ``database=True``.
    Refused while a deploy runs, the environment is frozen (``vumi.lock``) or a
    fleet deploy holds it. Returns what was removed, as ``<kind>: <what>``
    lines, and what was kept.

    environment
        The environment.
    database
        Also drop the environment's database and its role (pillar ``database``).
    test
        Only list what would be removed.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.remove topics/foo
        salt 'web*' vumi.remove topics/foo database=True test=True
    """
    cfg, found = _context(environment, kwargs)
    vumi_files.runas_user(cfg)  # a user that is gone (or Salt cannot act as) is said first
    if os.path.isdir(found.root) and not os.path.islink(found.root):
        free = _read_as_user(cfg, vumi_check.locks, cfg, found)
        if not free["ok"]:
            raise CommandExecutionError(f"{environment} is not removed: {free['detail']}")
    pillar = _vumi_pillar(kwargs.get("vumi_pillar"))
    nginx = vumi_settings.nginx(environment, pillar)

    as_owner = lambda root: _as_user(cfg, found, vumi_remove.empty, root)  # noqa: E731  the user's files, as the user
    unschedule = lambda test: _unschedule(cfg, found, test)  # noqa: E731
    return vumi_remove.retire(__salt__, cfg, found, nginx, database, test, as_owner, unschedule)


def _unschedule(cfg, found, test):
    """The environment's crontab entries (pillar's jobs or not), as the user: (kind, what) pairs; removed unless test."""
    if not salt.utils.path.which("crontab"):
        return []
    gone = _as_user(cfg, found, vumi_cron.sync, dict(cfg, cron={}), found, __salt__, test)
    return [("cron", f"{cfg['user']}'s {job}") for job in sorted(gone)]


def environments(**kwargs):
    """
    The environments present on this host: those pillar names (``vumi:environments``,
    ``vumi:deploy``, ``<app>:<env>`` of ``vumi:apps``) whose folder exists, and any
    other environment folder under the default ``<base_dir>/<app>``.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.environments
    """
    pillar = _vumi_pillar(kwargs.get("vumi_pillar")) or {}
    listed = pillar.get("deploy")
    named = set(pillar.get("environments") or {}) | (set(listed) if isinstance(listed, (list, tuple)) else set())
    apps = pillar.get("apps") if isinstance(pillar.get("apps"), dict) else {}
    named |= {
        f"{app}:{env}" for app, own in apps.items() if isinstance(own, dict) for env in own.get("environments") or {}
    }
    found = {env for env in named if _has_tree(env, kwargs)}
    return sorted(found | set(vumi_paths.trees_in(_context("default", kwargs)[1].app_dir)))


def _has_tree(env, kwargs):
    try:
        return os.path.isdir(_context(env, kwargs)[1].root)
    except SaltInvocationError:
        return False  # a bad name in pillar: vumi.settings says what is wrong with it


def summary(**kwargs):
    """
    Each environment on this host (``vumi.environments``): its current release,
    revision, whether the branch (or pin) upstream is at another commit
    (``behind``), and its ports configured, running and answering HTTP. What
    ``salt-run vumi.status`` shows a row of.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.summary
    """
    return [_summary(env, kwargs) for env in environments(**kwargs)]


def _summary(env, kwargs):
    cfg, found = _context(env, kwargs)
    try:
        now, revision, tip, holder, down = _read_as_user(
            cfg, _summary_row, __salt__, cfg, found, timeout=REMOTE_TIMEOUT
        )
    except (SaltInvocationError, CommandExecutionError) as exc:
        log.warning("vumi.summary: %s: %s", env, exc)
        now, revision, tip, holder, down = vumi_manifest.current_release_safe(found), None, None, None, None
    behind = None if tip is None or revision is None else tip != revision
    ports = vumi_webapp.status(cfg, found)
    procs = vumi_processes.status(cfg, found) if cfg["processes"] else {}
    return {
        "environment": env, "release": now, "revision": revision, "behind": behind, "ports": cfg["ports"],
        "running": sorted(p for p, s in ports.items() if s["running"]),
        "answering": sorted(p for p, s in ports.items() if s["answers"]),
        # what the running processes run (from their working directory), not where current points
        "releases": {p: s["release"] for p, s in ports.items()},
        "processes": {n: s["release"] for n, s in procs.items()},
        "held": holder,
        "maintenance": down,
    }  # fmt: skip


def _summary_row(functions, cfg, found):
    """
    As the deploy user: the current release, its revision, the branch's (or pin's)
    tip (None: unknown), the fleet run holding the environment (None: none), and
    whether it is in maintenance (None: not).
    """
    now = vumi_manifest.current_release_safe(found)
    revision = (vumi_manifest.read_manifest(found, now) or {}).get("revision") if now else None
    try:
        tip = vumi_git.remote_revision(functions, cfg, found, cfg["revision"])
    except (SaltInvocationError, CommandExecutionError):
        tip = None  # the repository does not answer: unknown
    return now, revision, tip, vumi_freeze.held(found), vumi_freeze.maintenance(found)


def check(environment, **kwargs):
    """
    A pre-flight of a deploy that changes nothing: whether the repository
    answers and has the branch (or pin), the environment's folder is the
    user's (or can be made), the shared files are there, the requirements file
    is in the commit to deploy (when the cache has it), no lock is held, the
    interpreter makes virtualenvs as the user, 512 MiB are free,
    supervisord answers (when there are ports), nginx's config passes
    ``nginx:test_cmd`` (when nginx is on) and PostgreSQL answers (when the
    environment has a database). ``ok`` is whether a deploy would get past
    all of them.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.check staging
    """
    cfg, found = _context(environment, kwargs)
    vumi_files.runas_user(cfg)  # a user that does not exist (or Salt cannot act as) is a clear error
    tree = vumi_check.tree(cfg, found)  # root's view: whether root can make the folder
    rest = _read_as_user(cfg, vumi_check.check, __salt__, cfg, found, timeout=REMOTE_TIMEOUT)
    pillar = _vumi_pillar(kwargs.get("vumi_pillar"))
    checks = dict(rest["checks"], tree=tree, supervisor=vumi_check.supervisor(cfg),
                  nginx=vumi_check.nginx(__salt__, vumi_settings.nginx(environment, pillar)),
                  database=vumi_check.database(__salt__, cfg["database"]))  # fmt: skip
    checks = {name: item for name, item in checks.items() if item is not None}  # what applies here
    return {"ok": all(item["ok"] for item in checks.values()), "checks": checks}


# --------------------------------------------------------------------------
# An operator's freeze
# --------------------------------------------------------------------------


def lock(environment, reason=None, **kwargs):
    """
    Freeze an environment during an incident: every deploy of it (``deploy``,
    ``prepare``, ``publish``, ``update``, the ``vumi.deployed`` state) fails at once,
    naming who locked it, when and why, until ``vumi.unlock``. Rollbacks,
    cleanup and webapp control still work.

    reason
        Why (required): shown to whoever tries to deploy.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.lock production reason="incident 42: payments down"
    """
    cfg, found = _context(environment, kwargs)
    return _as_user(cfg, found, vumi_freeze.lock, cfg, found, reason, vumi_history.who(__opts__, kwargs))


def maintenance(environment, state=None, message=None, **kwargs):
    """
    Maintenance mode: with ``on``, nginx's site answers every request 503 with
    a page (the current release's own ``maintenance.html`` when it has one,
    else a plain page saying ``message``) and ``Retry-After``, but the health
    check and the addresses of ``nginx:maintenance_allow`` still reach the app;
    ``off`` ends it. Without ``state``: whether it is on. Deploys go on (see
    ``vumi.lock`` to stop those); a hook may ask for the page while it runs
    (``{run: ..., maintenance: true}``).

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.maintenance staging on "Upgrading the database, back at 14:00"
        salt 'web*' vumi.maintenance staging off
    """
    cfg, found = _context(environment, kwargs)
    if state is None:
        return {"maintenance": _read_as_user(cfg, vumi_freeze.maintenance, found)}
    if state not in ("on", "off", True, False):
        raise SaltInvocationError(f"invalid state {state!r}: on or off")
    vumi_lock.deployed(cfg, found)
    if state in ("on", True):
        code = found.current_code() if vumi_manifest.current_release_safe(found) else None
        page = _as_user(cfg, found, vumi_freeze.maintenance_on, cfg, found, code, message)
        _record(cfg, maintenance=True)
        return {"maintenance": True, "page": page}
    was = _as_user(cfg, found, vumi_freeze.maintenance_off, found)
    _record(cfg, maintenance=False)
    return {"maintenance": False, "was": was}


def unlock(environment, **kwargs):
    """
    Lift ``vumi.lock``'s freeze (nothing to do if there is none).

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.unlock production
    """
    cfg, found = _context(environment, kwargs)
    return _as_user(cfg, found, vumi_freeze.unlock, cfg, found, vumi_history.who(__opts__, kwargs))


def locked(environment, **kwargs):
    """
    Whether an environment is frozen: who locked it, why and since when, or None.

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.locked production
    """
    cfg, found = _context(environment, kwargs)
    return _read_as_user(cfg, vumi_freeze.locked, found)


# --------------------------------------------------------------------------
# The webapp: one supervisord program per port (vumi_webapp, vumi_supervisor)
# --------------------------------------------------------------------------


def _one_port(action, environment, port, kwargs):
    cfg, found = _context(environment, kwargs)
    return vumi_webapp.locked(action, cfg, found, vumi_settings.parse_port(port))


def webapp_programs(environment, test=False, **kwargs):
    """
    Write the environment's supervisord program file (``<conf_dir>/<app>-<env>.conf``,
    root's, 0600: one program per port and per process type, run in ``current``) and
    have supervisord run it, one changed program at a time: each port replaced and
    answering HTTP (a process RUNNING) before the next. The first that does not come
    up stops the roll: the file is put back and the programs replaced go back on what
    they ran. ``programs`` lists those replaced (``test=True``: that would be).

    CLI Example:

    .. code-block:: bash

        salt 'web*' vumi.webapp_programs staging
    """
    cfg, found = _context(environment, kwargs)
    changed = vumi_webapp.programs(cfg, found, test=bool(test))
    return {"file": vumi_supervisor.program_file(cfg), "programs": changed, "changed": bool(changed)}


def start_webapp(environment, port=8000, **kwargs):
    """
    Start the webapp of the current release on a port, like ``fab
    start_webapp:<branch>,port=<port>``: supervisord's program
    ``<app>-<env>-<port>`` (written first, with every configured port, if it is
    not there; restarted by supervisor when it crashes, back when supervisord
    starts), logging to ``shared/logs/webapp.<port>.log``. Returns once it answers
    HTTP. A port pillar ``ports`` does not list is started too, and remembered in
    the program file until ``vumi.stop_webapp`` (``state.apply`` keeps it running);
    a port another process holds is refused, naming that process.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.start_webapp staging 8001
    """
    return _one_port(vumi_webapp.start, environment, port, kwargs)


def stop_webapp(environment, port=8000, **kwargs):
    """
    Stop the webapp on a port, through supervisord: ``stop_signal`` (default
    SIGTERM) to its process group, which gets ``stop_timeout`` seconds to finish
    its requests in flight before SIGKILL. Nothing here signals a process itself.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.stop_webapp staging 8001
    """
    return _one_port(vumi_webapp.stop, environment, port, kwargs)


def restart_webapp(environment, port=8000, **kwargs):
    """
    Stop, then start, the webapp on a port (it then runs the current release);
    returns once the new process answers HTTP. What would make the start fail
    (no current release, a bad ``webapp_command``) is found before the stop.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.restart_webapp staging 8001
    """
    return _one_port(vumi_webapp.restart, environment, port, kwargs)


def start_webapp_cluster(environment, *ports, **kwargs):
    """
    Start the webapp on several ports (default: the configured ``ports``).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.start_webapp_cluster staging 8000 8001
    """
    return vumi_webapp.cluster(vumi_webapp.start, *_context(environment, kwargs), ports)


def stop_webapp_cluster(environment, *ports, **kwargs):
    """
    Stop the webapp on several ports (default: the configured ``ports``).

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.stop_webapp_cluster staging 8000 8001
    """
    return vumi_webapp.cluster(vumi_webapp.stop, *_context(environment, kwargs), ports)


def restart_webapp_cluster(environment, *ports, **kwargs):
    """
    Restart the webapp on several ports, one port at a time (a rolling
    restart): each is serving again (answers HTTP, the readiness check
    of ``start_webapp``) before the next one stops. A port that does not come
    back stops the roll: the ports after it keep running their old release, and
    the error names the port, the tail of its log, and the ports done and left.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.restart_webapp_cluster staging 8000 8001
    """
    return vumi_webapp.cluster(vumi_webapp.restart, *_context(environment, kwargs), ports)


def webapp_status(environment, port=None, **kwargs):
    """
    Which ports run the webapp: per port supervisor's state (RUNNING, STARTING,
    BACKOFF, FATAL, STOPPED; ABSENT when supervisor has no such program), its
    pid, uptime, the release it runs (from its working directory), whether that
    is the current release, and whether it answers HTTP. Without a port: the
    configured ports and any other program of the environment's group.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.webapp_status staging
    """
    return vumi_webapp.status(*_context(environment, kwargs), port)


def process_status(environment, **kwargs):
    """
    The processes of pillar ``processes``: per instance (``worker``, or ``worker-0``,
    ``worker-1`` with ``numprocs``) supervisor's state, its pid, uptime, the release it
    runs (from its working directory) and whether that is the current one.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.process_status staging
    """
    return vumi_processes.status(*_context(environment, kwargs))


def restart_processes(environment, stale=False, **kwargs):
    """
    Restart the processes of pillar ``processes`` onto the current release, one type at
    a time: its instances get their ``stop_signal``, ``stop_timeout`` seconds, then
    start again and must be RUNNING before the next type. ``stale=True``: only the
    types with an instance not running or on another release. Returns the types restarted.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.restart_processes staging
    """
    _booleans(stale=stale)
    cfg, found = _context(environment, kwargs)
    return vumi_processes.restart(cfg, found, only_stale=stale)


def cron_jobs(environment, test=False, **kwargs):
    """
    Make the deploy user's crontab hold the environment's jobs of pillar ``cron``,
    exactly: each an entry with Salt's identifier ``vumi:<app>:<env>:<job>`` that runs
    the command in ``current`` with the webapps' environment; entries of jobs dropped
    from pillar are removed, the user's other entries left alone. Done as the deploy
    user, with Salt's ``cron`` functions. Returns the entries made, changed or removed
    (``test=True``: that would be), each ``{old, new}``.

    CLI Example:

    .. code-block:: bash

        salt '*' vumi.cron_jobs staging
    """
    cfg, found = _context(environment, kwargs)
    if not salt.utils.path.which("crontab"):
        if cfg["cron"]:
            raise CommandExecutionError(f"pillar cron has jobs for {environment}, but crontab is not installed here")
        return {}  # no cron here, and none wanted: nothing to remove either
    if cfg["cron"]:
        vumi_webapp.process_command_line(cfg, found, "true", "cron")  # no current release: said before the crontab
    return _as_user(cfg, found, vumi_cron.sync, cfg, found, __salt__, bool(test))
