"""
``vumi.check``: a pre-flight of a deploy that changes nothing (Capistrano's
``deploy:check``): the repository answers and has the branch or pin, the tree
is there or can be made and is the user's, the shared folders and files are in
place, the requirements file is in the commit to deploy, nobody holds a lock, the
interpreter runs as the user, there is room on the disk, supervisord answers.
"""

import fcntl
import os
import pwd
import shlex
import shutil

from salt.exceptions import CommandExecutionError

import vumi_files
import vumi_freeze
import vumi_git
import vumi_python
import vumi_settings
import vumi_supervisor
import vumi_virtualenv
import vumi_webapp

#: the free space below which a deploy is not expected to get through (a release, a virtualenv)
MIN_FREE = 512 * 1024 * 1024


def _item(ok, detail):
    return {"ok": bool(ok), "detail": detail}


def tree(cfg, paths):
    """The environment's folder is the user's, or its nearest existing parent lets it be made."""
    user = pwd.getpwnam(cfg["user"])
    if os.path.lexists(paths.root):
        if os.path.islink(paths.root) or not os.path.isdir(paths.root):
            return _item(False, f"{paths.root} is not a folder")
        owner = os.stat(paths.root).st_uid
        return _item(
            owner == user.pw_uid,
            f"{paths.root} belongs to uid {owner}"
            + ("" if owner == user.pw_uid else f", not to {cfg['user']} (uid {user.pw_uid})"),
        )
    parent = os.path.dirname(paths.root)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return _item(False, f"{parent} is not a folder: {paths.root} cannot be made under it")
    if os.geteuid() != 0 and not os.access(parent, os.W_OK):
        return _item(False, f"{paths.root} cannot be made: {parent} is not writable")
    return _item(True, f"{paths.root} will be made under {parent}")


def supervisor(cfg):
    """supervisord answers on the socket ``supervisor:conf_file`` names, when there are ports to run (root's view)."""
    try:
        vumi_webapp.can_restart(cfg)
    except CommandExecutionError as exc:
        return _item(False, str(exc))
    if not cfg["ports"]:
        return _item(True, "no ports: supervisord is not needed")
    return _item(True, f"supervisord answers on {vumi_supervisor.socket_path(cfg['supervisor']['conf_file'])}")


def nginx(salt, settings):
    """With nginx on: its whole config passes ``test_cmd`` (root's view, as the reload after a site change needs)."""
    if not settings["enabled"] or not settings["test_cmd"]:
        return None
    res = salt["cmd.run_all"](shlex.split(settings["test_cmd"]), python_shell=False, output_loglevel="quiet",
                              ignore_retcode=True, timeout=30)  # fmt: skip
    if res["retcode"] != 0:
        said = vumi_files.tail_lines((res.get("stderr") or res.get("stdout") or "").strip(), 3)
        return _item(False, f"{settings['test_cmd']} fails: {said}")
    return _item(True, f"{settings['test_cmd']} passes")


def database(salt, db):
    """With a database: the server answers as ``database.sls`` reaches it, and whether the database is made yet."""
    if not db:
        return None
    conn = vumi_settings.admin_connection(db)
    where = f"{db['host']}:{db['port']}"
    if "postgres.version" not in salt:
        return _item(False, f"PostgreSQL on {where} cannot be asked: Salt's postgres module is not loaded (no psql?)")
    try:
        version = salt["postgres.version"](**conn)
        there = version and salt["postgres.db_exists"](db["name"], **conn)
    except CommandExecutionError as exc:
        return _item(False, f"PostgreSQL on {where} cannot be asked: {exc}")
    if not version:
        return _item(False, f"PostgreSQL on {where} does not answer (as {db['admin_user'] or db['runas']})")
    made = "exists" if there else "will be made"
    return _item(True, f"PostgreSQL {version} answers on {where}; database {db['name']} {made}")


def disk(paths):
    """Free space where the environment lives (or will): at least ``MIN_FREE``."""
    where = paths.root
    while not os.path.isdir(where):
        where = os.path.dirname(where)
    info = os.statvfs(where)
    free = info.f_bavail * info.f_frsize
    detail = f"{free / 2**30:.1f} GiB free in {where}"
    return _item(free >= MIN_FREE, detail if free >= MIN_FREE else f"only {detail}: a deploy needs room for a release")


def _interpreter(salt, cfg):
    """The interpreter the virtualenvs are made with, run as the deploy user (this runs in their process)."""
    try:
        path, version = vumi_python.find(salt, cfg, None)
    except CommandExecutionError as exc:
        return _item(False, str(exc))
    return _item(True, f"{path} (Python {version}) runs as {cfg['user']}")


def _shared(cfg, paths):
    missing = [f for f in cfg["shared_files"] if not os.path.isfile(os.path.join(paths.shared, f))]
    made = [d for d in cfg["shared_dirs"] if not os.path.isdir(os.path.join(paths.shared, d))]
    detail = f"shared files missing: {', '.join(missing)}" if missing else "shared files present"
    if made:
        detail += f"; shared dirs to be made: {', '.join(made)}"
    return _item(not missing, detail)


def locks(cfg, paths):
    """No deploy running, no freeze (vumi.lock), no fleet hold: as the deploy user (it reads their files)."""
    held = vumi_freeze.locked(paths) if os.path.isdir(paths.root) else None
    if held:
        return _item(False, f"locked by {held['user']} since {held['since']}: {held['reason']}")
    fleet = vumi_freeze.held(paths) if os.path.isdir(paths.root) else None
    if fleet:
        return _item(False, f"held by the fleet deploy of release {fleet.get('release')} until {fleet.get('until')}")
    try:
        fd = vumi_files.open_regular(paths.lock)
    except (OSError, vumi_files.NotRegular) as exc:
        return _item(False, f"the deploy lock cannot be checked: {exc}")
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _item(False, f"a deploy is running: {os.pread(fd, 300, 0).decode('utf-8', 'replace')}")
        finally:
            os.close(fd)
    return _item(True, "no deploy running, not locked")


def _requirements(salt, cfg, paths, sha):
    """
    What the deploy would install is in commit ``sha`` (``requirements``, else the first of
    the install sources found): looked up in the cached clone when it has the commit, else
    asked upstream (a first deploy, or a push not fetched yet).
    """
    runas = vumi_files.runas_user(cfg)
    names = [cfg["requirements"]] if cfg["requirements"] else list(vumi_settings.INSTALL_SOURCES)
    looked = cfg["requirements"] or " or ".join(names)

    def found(present, where=""):
        try:
            kind, rel = vumi_virtualenv.source(cfg, f"commit {sha[:12]}", lambda r: r in present)
        except CommandExecutionError:
            return _item(False, f"none of {looked} is in {sha[:12]}{where}")
        if rel not in present:
            return _item(False, f"{rel} is not in {sha[:12]}{where}")
        if cfg["requirements"]:
            return _item(True, f"{rel} is in {sha[:12]}{where}")
        return _item(True, f"found {rel} in {sha[:12]}{where}: installed {INSTALLS[kind]}")

    if os.path.isdir(os.path.join(paths.repo, ".git")):
        try:
            vumi_git.git(salt, ["cat-file", "-e", f"{sha}^{{commit}}"], "git cat-file", cwd=paths.repo, runas=runas)
            return found(vumi_git.files_in(salt, paths.repo, sha, names, runas))
        except CommandExecutionError:
            pass  # not fetched yet
    ref = cfg["revision"] or cfg["branch"]
    if vumi_settings.SHA_RE.match(ref):
        return _item(True, f"{sha[:12]} is not fetched yet: the deploy checks {looked}")
    try:
        present = vumi_git.files_upstream(salt, cfg, ref, names)
    except CommandExecutionError as exc:
        return _item(False, f"{looked} cannot be looked for in {ref}: {exc}")
    return found(present, f" ({ref})")


#: how each install source is installed, as the check says it
INSTALLS = {
    "uv": "as locked (uv sync --locked)",
    "poetry": "as locked (poetry export)",
    "requirements": "as a requirements file",
    "pyproject": "as pyproject.toml's dependencies, resolved at the deploy",
}


def cron(cfg):
    """With jobs in pillar ``cron``: Debian's ``crontab`` is there to take them."""
    installed = shutil.which("crontab", path=vumi_settings.PLAIN_PATH)
    if not installed:
        return _item(False, "pillar cron has jobs, but crontab is not installed here (Debian: cron)")
    return _item(True, f"{installed} takes the {len(cfg['cron'])} job(s) of pillar cron")


def check(salt, cfg, paths):
    """
    Every finding but the tree's, and whether a deploy would get past them: run as
    the deploy user (vumi.check adds ``tree``, root's view of the folder root makes).
    """
    found = {"shared": _shared(cfg, paths), "lock": locks(cfg, paths), "interpreter": _interpreter(salt, cfg),
             "disk": disk(paths)}  # fmt: skip
    try:
        sha = vumi_git.remote_revision(salt, cfg, paths, cfg["revision"])
        what = f"pin {cfg['revision']}" if cfg["revision"] else f"branch {cfg['branch']}"
        url = vumi_settings.mask_credentials(cfg["repo_url"])
        found["repository"] = _item(True, f"{url} has {what} at {sha}" if sha else
                                    f"{url} answers; {what} is resolved by the next fetch")  # fmt: skip
    except CommandExecutionError as exc:
        sha = None
        found["repository"] = _item(False, str(exc))
    if sha:
        found["requirements"] = _requirements(salt, cfg, paths, sha)
    if cfg["cron"]:
        found["cron"] = cron(cfg)
    return {"ok": all(item["ok"] for item in found.values()), "checks": found}
