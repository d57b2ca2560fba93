"""
Settings: the defaults, the merge of pillar onto them, and the validation of every value.

Read in one place: ``merge`` is what ``vumi.settings`` returns.
"""

import copy
import difflib
import fnmatch
import logging
import os
import re
import signal
import string
import urllib.parse

from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)


#: the PATH of everything run as the deploy user (a release's ``ve/bin`` goes first where there is one)
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"


DEFAULTS = {
    "base_dir": "/var/praekelt",
    "app": "vumi",
    "repo_url": "http://github.com/praekelt/vumi.git",
    "branch": None,  # the environment's name
    "revision": None,  # optional pin: commit, tag
    # what to install, a path in the code; None: found (uv.lock, poetry.lock, requirements.txt,
    # config/requirements.pip, pyproject.toml: the first there, see INSTALL_SOURCES)
    "requirements": None,
    "repo_tree": None,  # a subfolder of the repository that is the app (Capistrano's repo_tree)
    "git_depth": None,  # fetch only this many commits of history (a shallow cache)
    "user": "root",
    "keep_releases": 5,
    "keep_failed": 3,
    "remove_rolled_back": False,  # a rollback removes the release it left (Ansistrano's default)
    "ports": [8000],
    "host": "127.0.0.1",
    # interpreter for virtualenvs: a path, or a version ("3.12") found on the host; None: the
    # repository's .python-version, else Salt's own when the deploy user can run it, else python3
    "python": None,
    "reuse_virtualenvs": True,
    "cache_dir": None,  # pip's and uv's caches (pip/, uv/ in it); None: shared/tmp/cache of the environment
    "installer": "uv",  # uv where the deploy user can run it, else pip; "pip": always pip
    "shared_dirs": ["logs", "tmp"],
    "shared_files": [],  # files of shared/ linked into each release (.env, config/local.py); must exist
    "settings_module": "environments.{env}",
    # gunicorn, a production server ({wsgi}: wsgi_module, else the one package with a wsgi.py)
    "webapp_command": "{venv}/bin/gunicorn --bind {host}:{port} --workers 2 --threads 4 {wsgi}",
    "wsgi_module": None,
    "supervisor": {},  # see SUPERVISOR_DEFAULTS
    # a PostgreSQL role and database for the environment (salt/vumi/database.sls makes them);
    # its URL reaches every process as DATABASE_URL. See DATABASE_DEFAULTS
    "database": None,
    "start_timeout": 30,
    "stop_timeout": 10,
    "stop_signal": "SIGTERM",  # asks the webapp to stop; SIGKILL follows after stop_timeout
    "lock_timeout": 300,
    # the switch to a new release waits for one webapp of it, on a spare port, to answer;
    # None: off here, and on in the vumi.deployed state when the environment has ports
    "health_check": None,
    "health_path": None,  # None: GET / answers below 500 (up and serving); a path: it answers 2xx/3xx
    "health_timeout": 30,  # seconds the release gets to answer (a real app's cold start)
    "env": {},  # environment variables for the webapp, execute, managepy, hooks and the health check
    "secret_env": [],  # names in env and settings vumi.settings masks, besides those that look secret
    "pip_packages": [],  # requirement specifiers installed with the requirements (part of the virtualenv's key)
    "install": {},  # extras and dependency groups of a pyproject/lockfile, the installers' env: INSTALL_DEFAULTS
    # shell lines run in the new release as user: before_publish after its virtualenv and before
    # the health check and the switch, after_publish after the switch; {run: ..., once: true}
    # runs on one host of a fleet deploy
    "hooks": {"before_publish": [], "after_publish": []},
    # seconds a hook line may run (per line: {run: ..., timeout: 600}); then its process group is killed
    "hook_timeout": 1800,
    "settings": None,  # a mapping rendered into every release as a Python settings file
    "settings_path": "environments/{env}.py",  # where, in the code folder
    "settings_extends": None,  # a module the rendered file imports first, e.g. environments.default
    "events": True,  # fire a Salt event per deploy stage: vumi/deploy/<env>/<stage>
    # webhooks: [{url, events, body, headers, timeout}], POSTed on deploy start, success, failure
    # and rollback (a fleet run's from the master: its runner's notify); see NOTIFY_DEFAULTS
    "notify": [],
    # long-running programs beside the webapp, under supervisord: {name: {command, numprocs,
    # stop_signal, stop_timeout}}; restarted onto each release that goes live, after the webapps
    "processes": {},
    # scheduled jobs in the deploy user's crontab: {name: {schedule: "0 3 * * *", command}}
    "cron": {},
    "environments": {},
}


SUPERVISOR_DEFAULTS = {
    "conf_dir": "/etc/supervisor/conf.d",  # supervisord's [include] folder: one program file per environment
    "conf_file": "/etc/supervisor/supervisord.conf",  # names the socket the calls use
    "manage_service": True,  # the SLS installs and runs Debian's supervisor
    "log_max_bytes": 50 * 1024 * 1024,  # a webapp's log is rotated at this size...
    "log_backups": 10,  # ...keeping this many old ones
    "start_retries": 3,  # supervisor's startretries: then FATAL
}


INSTALL_DEFAULTS = {
    "extras": [],  # the project's optional dependencies installed too (uv.lock, poetry.lock, pyproject.toml)
    "groups": [],  # its dependency groups installed too (uv.lock: [dependency-groups]; poetry.lock: groups)
    # environment of the installers, for an index of your own: UV_INDEX_URL, UV_FIND_LINKS,
    # PIP_INDEX_URL, PIP_FIND_LINKS, UV_OFFLINE, PIP_NO_INDEX...
    "env": {},
    # compile every installed module at the build (uv's --compile-bytecode, pip's default); off:
    # each module is compiled at its first import, the health check's before the switch (measured
    # in bench/packaging_speed.py: the first deploy is faster, the first request no slower)
    "compile_bytecode": False,
}

#: what is installed when ``requirements`` is unset: the first of these in the code folder
#: (a uv.lock counts beside a pyproject.toml only)
INSTALL_SOURCES = ("uv.lock", "poetry.lock", "requirements.txt", "config/requirements.pip", "pyproject.toml")


DATABASE_DEFAULTS = {
    "name": "{app}_{env}",  # the database; {app} and {env} (as a Python name) are filled in
    "user": "{app}_{env}",  # its owner, the role the app logs in as
    "password": None,  # required
    "host": "127.0.0.1",
    "port": 5432,
    "url_env": "DATABASE_URL",  # the variable that hands the URL to the app
    "env": {},  # more variables for the app, each one part of it: {DB_HOST: host, DB_PASSWORD: password}
    # how database.sls reaches the server to make them (Salt's postgres_* db_user, db_password, user)
    "admin_user": None,
    "admin_password": None,
    "runas": "postgres",
}


#: what salt/vumi/map.jinja reads besides the module's settings (their defaults are in
#: salt/vumi/defaults.yaml; tests/unit checks these names against it)
SLS_KEYS = ("layout", "deploy", "webapp")
NGINX_DEFAULTS = {
    "enabled": False, "server_name": "_", "listen": 80, "static": None, "static_url": "/static/", "media": None,
    "media_url": "/media/", "ssl_certificate": None, "ssl_certificate_key": None, "connect_timeout": "1s",
    "conf_dir": "/etc/nginx/sites-enabled", "package": "nginx", "service": "nginx", "test_cmd": "nginx -t -q -e stderr",
    "manage_package": True, "manage_service": True,
    # during maintenance (vumi.maintenance): the addresses (or CIDR blocks) that still reach the
    # app, and the Retry-After seconds of the 503 everyone else gets
    "maintenance_allow": [], "retry_after": 120,
}  # fmt: skip
NGINX_KEYS = tuple(NGINX_DEFAULTS)


def nginx(env, pillar):
    """
    The nginx settings of environment ``env`` as nginx.sls reads them from pillar
    ``vumi`` (defaults.yaml's, then ``vumi:nginx``, then the app's for ``<app>:<env>``,
    then the environment's), for what the module does with the site (``vumi.remove``).
    """
    pillar = pillar if isinstance(pillar, dict) else {}
    app, env = split_name(env)
    layers = [pillar]
    if app is not None:
        layers.append((pillar.get("apps") or {}).get(app) or {})
    layers.append((layers[-1].get("environments") or {}).get(env) or {})
    merged = dict(NGINX_DEFAULTS)
    for layer in layers:
        merged.update(layer.get("nginx") or {})
    return merged


#: keys of pillar ``vumi`` alone, not of an environment's section (nor of an app's)
GLOBAL_ONLY = ("environments", "deploy", "manage_user", "apps")
#: what the apps of one host share (pillar ``vumi:<key>``): the host's folders, daemons and
#: tools. An app's own keys (``repo_url``, ``env``, ``hooks``, ``database``, ``user``...) come
#: from ``vumi:apps:<app>`` alone: one app's never merge into another's environments.
HOST_KEYS = ("base_dir", "supervisor", "python", "cache_dir", "installer", "events", "lock_timeout", "host")
#: the mappings whose keys are the bundle's (``env`` and ``settings`` hold the user's own names)
NESTED = {"supervisor": SUPERVISOR_DEFAULTS, "database": DATABASE_DEFAULTS, "hooks": ("before_publish", "after_publish"),
          "sls": SLS_KEYS, "nginx": NGINX_KEYS, "install": INSTALL_DEFAULTS}  # fmt: skip
#: the mappings of the user's names whose entries hold the bundle's keys (checked in ``processes``, ``cron``)
PROCESS_KEYS = ("command", "numprocs", "stop_signal", "stop_timeout")
CRON_KEYS = ("schedule", "command")
KNOWN = (*DEFAULTS, "deploy", "manage_user", "sls", "nginx", "apps")


def _unknown(key, known, what):
    """``what`` names the unknown ``key``; the closest of ``known`` is offered, or the list when it is short."""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    if close:
        hint = f"; did you mean {close[0]}?"
    elif len(known) <= 16:
        hint = f"; known keys: {', '.join(sorted(known))}"
    else:
        hint = " (every key: docs/settings-reference.md)"
    return f"unknown {what}{hint}"


def _section(mapping, where, known):
    problems = []
    for key, value in mapping.items():
        if key in GLOBAL_ONLY and key not in known:
            problems.append(f"{where}:{key}: set {key} at the top of pillar vumi, not per environment")
        elif key not in known:
            problems.append(_unknown(key, known, f"key {where}:{key}"))
        elif key in NESTED and isinstance(value, dict):
            problems += [
                _unknown(sub, NESTED[key], f"key {where}:{key}:{sub}") for sub in value if sub not in NESTED[key]
            ]
    return problems


def _environments(source, where):
    environments = source.get("environments")
    if environments is not None and not isinstance(environments, dict):
        return [f"invalid {where}:environments: must map environment names to their settings"]
    problems = []
    for env, own in (environments or {}).items():
        if isinstance(own, dict):
            problems += _section(own, f"{where}:environments:{env}", [k for k in KNOWN if k not in GLOBAL_ONLY])
        elif own is not None:
            problems.append(f"invalid {where}:environments:{env} {own!r}: must be a mapping of settings")
    return problems


def schema_problems(source, where="vumi"):
    """
    Every key of ``source`` (pillar ``vumi``, or a minion's ``vumi`` option) and of its
    environments and apps that the bundle does not know, each named with where it is
    and the closest known key: a typo is an error, never a silently ignored line.
    """
    if not isinstance(source, dict):
        return [] if source is None else [f"invalid {where} {source!r}: must be a mapping"]
    problems = _section(source, where, KNOWN) + _environments(source, where)
    apps = source.get("apps")
    if apps is not None and not isinstance(apps, dict):
        return problems + [f"invalid {where}:apps: must map app names to their settings"]
    for name, app in (apps or {}).items():
        if not isinstance(app, dict):
            problems.append(f"invalid {where}:apps:{name} {app!r}: must be a mapping of settings")
            continue
        known = [k for k in KNOWN if k not in GLOBAL_ONLY] + ["environments"]
        problems += _section(app, f"{where}:apps:{name}", known) + _environments(app, f"{where}:apps:{name}")
    return problems


def split_name(name):
    """
    ``(app, env)`` of an environment's name: ``<app>:<env>`` names an environment of pillar
    ``vumi:apps:<app>`` (git forbids ``:`` in a branch); a plain name, one of ``vumi`` itself.
    """
    if isinstance(name, str) and ":" in name:
        app, _, env = name.partition(":")
        return check_name(app, "app", APP_RE), env
    return None, name


NAME_PART = r"[A-Za-z0-9_][A-Za-z0-9._-]*"


BRANCH_RE = re.compile(rf"^{NAME_PART}(/{NAME_PART})*$")


APP_RE = re.compile(rf"^{NAME_PART}$")


RELEASE_RE = re.compile(r"^\d{8}_\d{6}$")


REVISION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")


SHA_RE = re.compile(r"^[0-9a-f]{40}$")


#: every control character but the tab: no line of a program file, no value of env, may hold one
CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


RELEASE_FORMAT = "%Y%m%d_%H%M%S"


MAX_PORTS = 64


def check_name(value, what, pattern=BRANCH_RE):
    if not isinstance(value, str) or not value:
        raise SaltInvocationError(f"{what} must be a non-empty string, not {value!r}")
    if len(value) > 200 or ".." in value or value.endswith((".lock", ".")) or not pattern.match(value):
        raise SaltInvocationError(
            f"invalid {what} {value!r}: use letters, digits, '.', '_', '-' and '/' "
            "between parts; no '..', no leading '/' or '-', no spaces or shell characters"
        )
    return value


def env_name(cfg):
    """
    ``<app>-<env dir>``: the environment's name in files outside its tree (its supervisor
    programs' prefix and program file, its nginx site), unique per host and app.
    """
    return f"{cfg['app']}-{env_dirname(cfg['environment'])}"


def admin_connection(db):
    """How Salt's ``postgres_*`` functions reach the server as its admin (``database.sls``'s, the check's, remove's)."""
    return {"host": db["host"], "port": db["port"], "user": db["admin_user"], "password": db["admin_password"],
            "runas": db["runas"]}  # fmt: skip


def env_dirname(env):
    """An environment's folder name (``vumi.env_dirname``): ``/`` becomes ``~``, which git forbids in branch names."""
    return check_name(env, "environment").replace("/", "~")


def parse_port(value):
    if isinstance(value, bool):
        raise SaltInvocationError(f"invalid port {value!r}: must be an integer 1-65535")
    try:
        port = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise SaltInvocationError(f"invalid port {value!r}: must be an integer 1-65535") from None
    if not 1 <= port <= 65535 or (isinstance(value, str) and not value.strip().isdigit()):
        raise SaltInvocationError(f"invalid port {value!r}: must be an integer 1-65535")
    return port


def parse_ports(values):
    """Ports as given on the CLI: ints, numeric strings, lists, or '8000,8001'."""
    flat = []
    for value in values:
        if isinstance(value, (list, tuple)):
            flat.extend(value)
        elif isinstance(value, str) and "," in value:
            flat.extend(value.split(","))
        else:
            flat.append(value)
    if len(flat) > MAX_PORTS:
        raise SaltInvocationError(f"too many ports ({len(flat)}); at most {MAX_PORTS}")
    ports = []
    for value in flat:
        port = parse_port(value)
        if port not in ports:
            ports.append(port)
    return ports


def relpath(value, what):
    if not isinstance(value, str) or not value or value.startswith("/") or ".." in value.split("/") or "\0" in value:
        raise SaltInvocationError(f"invalid {what} {value!r}: must be a relative path inside the code")
    return value


def revision(value):
    """A revision pin or argument: None, or the text of a commit, tag or branch."""
    if value is None:
        return None
    if not isinstance(value, str):  # YAML reads 1.10 as the float 1.1: another tag
        raise SaltInvocationError(f"invalid revision {value!r}: must be text (quote it in YAML: revision: '1.10')")
    return check_name(value, "revision", REVISION_RE)


BOOLEANS = ("reuse_virtualenvs", "events", "remove_rolled_back")
#: signals that pause or are ignored: a webapp asked to stop with them never stops
NOT_STOPPING = ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGCONT", "SIGCHLD", "SIGWINCH", "SIGURG")


def validate(cfg):
    base = cfg["base_dir"]
    if not isinstance(base, str) or not os.path.isabs(base) or not base.strip("/"):
        raise SaltInvocationError(f"invalid base_dir {base!r}: must be an absolute path other than /")
    if "\0" in base or ".." in base.split("/"):
        raise SaltInvocationError(f"invalid base_dir {base!r}")
    cfg["base_dir"] = os.path.normpath(base)
    check_name(cfg["app"], "app", APP_RE)
    check_name(cfg["branch"], "branch")
    cfg["revision"] = revision(cfg["revision"])
    user = cfg["user"]
    if not isinstance(user, str) or not user.strip() or user != user.strip():
        # an empty user is not root, and a number is not a name
        raise SaltInvocationError(f"invalid user {user!r}: must be the name of a user (root included, by name)")
    for key in BOOLEANS:
        if not isinstance(cfg[key], bool):
            raise SaltInvocationError(f"invalid {key} {cfg[key]!r}: must be true or false (not a string)")
    if not isinstance(cfg["repo_url"], str) or not cfg["repo_url"] or cfg["repo_url"].startswith("-"):
        raise SaltInvocationError(f"invalid repo_url {cfg['repo_url']!r}")
    if cfg["requirements"] is not None:
        relpath(cfg["requirements"], "requirements")
    cfg["python"] = python(cfg["python"])
    cfg["install"] = install(cfg["install"])
    cache = cfg["cache_dir"]
    if cache is not None and (not isinstance(cache, str) or not os.path.isabs(cache) or "\0" in cache):
        raise SaltInvocationError(f"invalid cache_dir {cache!r}: an absolute path, or null for the environment's own")
    if cfg["repo_tree"] is not None:
        cfg["repo_tree"] = relpath(cfg["repo_tree"], "repo_tree").strip("/") or None
    depth = cfg["git_depth"]
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise SaltInvocationError(f"invalid git_depth {depth!r}: an integer >= 1, or null for the whole history")
    if cfg["settings"] is not None and not isinstance(cfg["settings"], dict):
        raise SaltInvocationError(f"invalid settings {cfg['settings']!r}: must be a mapping")
    for key in cfg["settings"] or {}:
        if not isinstance(key, str) or not key.isidentifier():
            raise SaltInvocationError(f"invalid settings key {key!r}: must be a Python identifier")
        py_literal(cfg["settings"][key], key)  # a value the file cannot hold fails before any deploy
    if cfg["settings_extends"] is not None and not re.match(r"^[A-Za-z_][\w.]*$", str(cfg["settings_extends"])):
        raise SaltInvocationError(f"invalid settings_extends {cfg['settings_extends']!r}: must be a module name")
    try:
        relpath(cfg["settings_path"].format(env=env_module(cfg["environment"])), "settings_path")
    except (AttributeError, IndexError, KeyError, ValueError) as exc:
        raise SaltInvocationError(
            f"invalid settings_path {cfg['settings_path']!r}: a path in the code, with {{env}} as its only field ({exc!r})"
        ) from None
    if not isinstance(cfg["shared_dirs"], (list, tuple)):  # a string is not a list of one-letter folders
        raise SaltInvocationError(f"invalid shared_dirs {cfg['shared_dirs']!r}: must be a list of folder names")
    for name in cfg["shared_dirs"]:
        check_name(name, "shared dir")  # nested ones too: public/system
    if not isinstance(cfg["shared_files"], (list, tuple)):
        raise SaltInvocationError(f"invalid shared_files {cfg['shared_files']!r}: must be a list of paths")
    for name in cfg["shared_files"]:
        if not isinstance(name, str) or any(part in ("", ".", "..") for part in name.split("/")) or "\0" in name:
            raise SaltInvocationError(f"invalid shared file {name!r}: a relative path like .env or config/local.py")
    if set(cfg["shared_files"]) & set(cfg["shared_dirs"]):
        raise SaltInvocationError(
            f"{sorted(set(cfg['shared_files']) & set(cfg['shared_dirs']))} cannot be both a shared dir and a shared file"
        )
    for key in ("keep_releases", "keep_failed"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise SaltInvocationError(f"invalid {key} {cfg[key]!r}: must be an integer >= 1")
    for key in ("start_timeout", "stop_timeout", "lock_timeout", "health_timeout", "hook_timeout"):
        try:
            cfg[key] = float(cfg[key])
        except (TypeError, ValueError):
            raise SaltInvocationError(f"invalid {key} {cfg[key]!r}: must be a number") from None
        if not 0 <= cfg[key] < float("inf"):  # nan too: a deadline that never comes
            raise SaltInvocationError(f"invalid {key} {cfg[key]!r}: must be a number of seconds >= 0")
    if cfg["health_check"] is not None and not isinstance(cfg["health_check"], bool):
        raise SaltInvocationError(f"invalid health_check {cfg['health_check']!r}: must be true, false or null")
    path = cfg["health_path"]
    if path is not None and (not isinstance(path, str) or not re.match(r"^/[\x21-\x7e]{0,1000}$", path)):
        raise SaltInvocationError(
            f"invalid health_path {path!r}: must be a URL path starting with '/' (no spaces), or null"
        )
    if cfg["installer"] not in ("uv", "pip"):
        raise SaltInvocationError(f"invalid installer {cfg['installer']!r}: must be uv or pip")
    ports = cfg["ports"]
    cfg["ports"] = parse_ports(ports if isinstance(ports, (list, tuple)) else [ports])
    cfg["stop_signal"] = signal_name(cfg["stop_signal"])
    if cfg["stop_signal"] in NOT_STOPPING:
        raise SaltInvocationError(f"invalid stop_signal {cfg['stop_signal']}: it does not stop a process")
    cfg["env"] = environment(cfg["env"])
    cfg["secret_env"] = secret_names(cfg["secret_env"])
    cfg["pip_packages"] = pip_packages(cfg["pip_packages"])
    if cfg["hook_timeout"] == 0:
        raise SaltInvocationError("invalid hook_timeout 0: a hook needs more than 0 seconds")
    cfg["hooks"] = hooks(cfg["hooks"], cfg["hook_timeout"])
    cfg["supervisor"] = supervisor(cfg["supervisor"])
    cfg["database"] = database(cfg["database"], cfg)
    wsgi = cfg["wsgi_module"]
    if wsgi is not None and (not isinstance(wsgi, str) or not WSGI_RE.match(wsgi)):
        raise SaltInvocationError(
            f"invalid wsgi_module {wsgi!r}: a module name like mysite.wsgi, mysite.wsgi:application, "
            "or an app factory's call, flaskr:create_app()"
        )
    if not isinstance(cfg["webapp_command"], str) or not cfg["webapp_command"].strip():
        raise SaltInvocationError(f"invalid webapp_command {cfg['webapp_command']!r}: must be a command line")
    command_fields(cfg["webapp_command"], "webapp_command", WEBAPP_FIELDS)
    cfg["processes"] = processes(cfg["processes"], cfg)
    cfg["cron"] = cron(cfg["cron"])
    cfg["notify"] = notify(cfg["notify"])
    return cfg


SQL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def database(value, cfg):
    """Pillar ``database``: None, or a mapping merged onto ``DATABASE_DEFAULTS``, with its ``url``."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SaltInvocationError(f"invalid database {value!r}: must be a mapping ({', '.join(DATABASE_DEFAULTS)})")
    unknown = set(value) - set(DATABASE_DEFAULTS) - {"url"}
    if unknown:
        raise SaltInvocationError(f"invalid database key(s) {sorted(unknown)}: use {', '.join(DATABASE_DEFAULTS)}")
    db = dict(DATABASE_DEFAULTS, **{k: v for k, v in value.items() if k != "url"})
    for key in ("name", "user"):
        if not isinstance(db[key], str):
            raise SaltInvocationError(f"invalid database:{key} {db[key]!r}: must be a name")
        db[key] = db[key].replace("{app}", cfg["app"]).replace("{env}", env_module(cfg["environment"]))
        if not SQL_NAME_RE.match(db[key]):
            raise SaltInvocationError(f"invalid database:{key} {db[key]!r}: letters, digits and _ (at most 63)")
    if not isinstance(db["password"], str) or not db["password"]:
        raise SaltInvocationError("invalid database:password: must be a non-empty string (the role's password)")
    if not isinstance(db["host"], str) or not re.match(r"^[A-Za-z0-9_.:-]+$", db["host"]):
        raise SaltInvocationError(f"invalid database:host {db['host']!r}")
    db["port"] = parse_port(db["port"])
    if not isinstance(db["url_env"], str) or not ENV_NAME_RE.match(db["url_env"]):
        raise SaltInvocationError(f"invalid database:url_env {db['url_env']!r}: must be a variable name")
    db["env"] = database_env(db["env"])
    host = f"[{db['host']}]" if ":" in db["host"] else db["host"]
    db["url"] = (
        f"postgres://{db['user']}:{urllib.parse.quote(db['password'], safe='')}@{host}:{db['port']}/{db['name']}"
    )
    return db


#: the parts of the database a variable of ``database:env`` may hand to the app
DATABASE_PARTS = ("host", "port", "name", "user", "password", "url")


def database_env(value):
    """Pillar ``database:env``: variable names, each mapped to a part of the database (``DATABASE_PARTS``)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SaltInvocationError(f"invalid database:env {value!r}: must map variable names to parts of the database")
    for name, part in value.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise SaltInvocationError(f"invalid database:env variable {name!r}: letters, digits and _")
        if part not in DATABASE_PARTS:
            raise SaltInvocationError(f"invalid database:env {name}: {part!r}: one of {', '.join(DATABASE_PARTS)}")
    return dict(value)


def supervisor(value):
    """Pillar ``supervisor``, merged key by key onto ``SUPERVISOR_DEFAULTS`` and checked."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SaltInvocationError(f"invalid supervisor {value!r}: must be a mapping ({', '.join(SUPERVISOR_DEFAULTS)})")
    unknown = set(value) - set(SUPERVISOR_DEFAULTS)
    if unknown:
        raise SaltInvocationError(f"invalid supervisor key(s) {sorted(unknown)}: use {', '.join(SUPERVISOR_DEFAULTS)}")
    conf = dict(SUPERVISOR_DEFAULTS, **value)
    for key in ("conf_dir", "conf_file"):
        if not isinstance(conf[key], str) or not os.path.isabs(conf[key]) or "\0" in conf[key]:
            raise SaltInvocationError(f"invalid supervisor:{key} {conf[key]!r}: must be an absolute path")
    if not isinstance(conf["manage_service"], bool):
        raise SaltInvocationError(
            f"invalid supervisor:manage_service {conf['manage_service']!r}: must be true or false"
        )
    for key, low in (("log_max_bytes", 1024), ("log_backups", 0), ("start_retries", 0)):
        if isinstance(conf[key], bool) or not isinstance(conf[key], int) or conf[key] < low:
            raise SaltInvocationError(f"invalid supervisor:{key} {conf[key]!r}: must be an integer >= {low}")
    return conf


ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def environment(value):
    """Pillar ``env``: variable names to strings (numbers are written as text)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SaltInvocationError(f"invalid env {value!r}: must be a mapping of variable names to values")
    for key, item in value.items():
        if not isinstance(key, str) or not ENV_NAME_RE.match(key):
            raise SaltInvocationError(f"invalid env key {key!r}: must be a variable name (letters, digits, _)")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise SaltInvocationError(f"invalid env value for {key}: {item!r} must be a string or a number")
        if CONTROL_RE.search(str(item)):
            raise SaltInvocationError(f"invalid env value for {key}: {item!r} holds a line break or control character")
    return {key: str(item) for key, item in value.items()}


def secret_names(value):
    """Pillar ``secret_env``: names (of ``env`` or ``settings``) whose values ``vumi.settings`` masks."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and ENV_NAME_RE.match(v) for v in value):
        raise SaltInvocationError(f"invalid secret_env {value!r}: must be a list of names (letters, digits, _)")
    return list(value)


#: gunicorn's app: a module, ``module:attr``, or ``module:factory()`` / with literal arguments
WSGI_RE = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*(\([\w'\",.=-]*\))?)?$")
PYTHON_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")


def python(value):
    """Pillar ``python``: None, an absolute path, or a version ``"3.N"`` (3.8 or newer)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise SaltInvocationError(
            f'invalid python {value!r}: quote the version (python: "{value}"); YAML reads 3.10 as the number 3.1'
        )
    if isinstance(value, str) and os.path.isabs(value) and "\0" not in value:
        return value
    match = PYTHON_VERSION_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise SaltInvocationError(
            f'invalid python {value!r}: a version such as "3.12", or the absolute path of an interpreter'
        )
    if (int(match.group(1)), int(match.group(2))) < (3, 8):
        raise SaltInvocationError(f"invalid python {value!r}: virtualenvs are made with Python 3.8 or newer")
    return value


def install(value):
    """Pillar ``install``: ``extras`` and ``groups`` (lists of names), ``env`` (the installers' variables)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SaltInvocationError(f"invalid install {value!r}: a mapping of {', '.join(INSTALL_DEFAULTS)}")
    merged = {**copy.deepcopy(INSTALL_DEFAULTS), **value}
    for key in ("extras", "groups"):
        names = merged[key]
        if not isinstance(names, (list, tuple)) or not all(
            isinstance(n, str) and re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", n) for n in names
        ):
            raise SaltInvocationError(f"invalid install:{key} {names!r}: a list of names like [postgres, prod]")
        merged[key] = list(names)
    merged["env"] = environment(merged["env"])
    if not isinstance(merged["compile_bytecode"], bool):
        raise SaltInvocationError(f"invalid install:compile_bytecode {merged['compile_bytecode']!r}: true or false")
    return merged


def pip_packages(value):
    """Pillar ``pip_packages``: a list of requirement specifiers (a string is not a list of characters)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise SaltInvocationError(f"invalid pip_packages {value!r}: must be a list of requirement specifiers")
    for item in value:
        if not isinstance(item, str) or not item.strip() or item.lstrip().startswith("-") or CONTROL_RE.search(item):
            raise SaltInvocationError(
                f"invalid pip_packages entry {item!r}: must be a requirement specifier like psycopg2-binary==2.9.9"
            )
    return [item.strip() for item in value]


#: the fields of ``webapp_command``; a process's or cron job's command has those that are not a port's
WEBAPP_FIELDS = ("port", "host", "pidfile", "logfile", "settings", "env", "branch", "code", "venv", "current", "wsgi")
COMMAND_FIELDS = ("host", "settings", "env", "branch", "code", "venv", "current", "wsgi")


def command_fields(template, what, fields):
    """The ``{field}`` names of a command line, each one of ``fields``; a typo is named before anything runs."""
    if not isinstance(template, str) or not template.strip() or CONTROL_RE.search(template):
        raise SaltInvocationError(f"invalid {what} {template!r}: must be a command line (one line)")
    return template_fields(template, what, fields)


def template_fields(template, what, fields):
    """The ``{field}`` names of ``template``, each one of ``fields``; a typo is named."""
    try:
        used = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise SaltInvocationError(f"invalid {what} {template!r}: {exc} (write {{{{ and }}}} for a brace)") from None
    for name in used:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {{{close[0]}}}? " if close else ""
            raise SaltInvocationError(
                f"invalid {what} {template!r}: {{{name}}} is not a field; {hint}"
                f"use {', '.join('{' + f + '}' for f in fields)}"
            )
    return template


#: a process's name: its supervisor program is ``<app>-<env>-<name>``; a port's is ``<app>-<env>-<port>``
PROCESS_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
MAX_NUMPROCS = 64


def _entries(value, what, keys):
    """A mapping of the user's names to entries of ``keys`` (a string: the command); null entries dropped."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SaltInvocationError(f"invalid {what} {value!r}: must map names to {{{', '.join(keys)}}}")
    result = {}
    for name, entry in value.items():
        if entry is None:  # an environment's ``name: null`` removes the global one
            continue
        if isinstance(entry, str):
            entry = {"command": entry}
        if not isinstance(entry, dict):
            raise SaltInvocationError(f"invalid {what}:{name} {entry!r}: must be a mapping of {', '.join(keys)}")
        for key in entry:
            if key not in keys:
                raise SaltInvocationError(_unknown(key, keys, f"key {what}:{name}:{key}"))
        result[name] = dict(entry)
    return result


def processes(value, cfg):
    """Pillar ``processes``: programs beside the webapp, each validated and filled with the environment's defaults."""
    result = {}
    for name, entry in _entries(value, "processes", PROCESS_KEYS).items():
        if not isinstance(name, str) or not PROCESS_NAME_RE.match(name):
            raise SaltInvocationError(
                f"invalid process name {name!r}: a letter, then up to 39 letters, digits, '_' or '-' (no spaces, "
                f"no '/'; a name of digits is a port's program)"
            )
        numprocs = entry.get("numprocs", 1)
        if isinstance(numprocs, bool) or not isinstance(numprocs, int) or not 1 <= numprocs <= MAX_NUMPROCS:
            raise SaltInvocationError(
                f"invalid processes:{name}:numprocs {numprocs!r}: must be an integer from 1 to {MAX_NUMPROCS}"
            )
        stop = signal_name(entry.get("stop_signal", cfg["stop_signal"]))
        if stop in NOT_STOPPING:
            raise SaltInvocationError(f"invalid processes:{name}:stop_signal {stop}: it does not stop a process")
        timeout = entry.get("stop_timeout", cfg["stop_timeout"])
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < float("inf"):
            raise SaltInvocationError(f"invalid processes:{name}:stop_timeout {timeout!r}: must be seconds >= 0")
        if "command" not in entry:
            raise SaltInvocationError(f"processes:{name} has no command")
        command = command_fields(entry["command"], f"processes:{name}:command", COMMAND_FIELDS)
        result[name] = {"command": command, "numprocs": numprocs, "stop_signal": stop, "stop_timeout": float(timeout)}
    return result


#: one field of a crontab schedule: digits, names (mon, jan), ``*``, ranges, lists and steps
CRON_FIELD_RE = re.compile(r"^[A-Za-z0-9*/,-]+$")


def cron(value):
    """Pillar ``cron``: scheduled jobs, each a five-field schedule and a command line."""
    result = {}
    for name, entry in _entries(value, "cron", CRON_KEYS).items():
        if not isinstance(name, str) or not PROCESS_NAME_RE.match(name):
            raise SaltInvocationError(
                f"invalid cron job name {name!r}: a letter, then up to 39 letters, digits, '_' or '-'"
            )
        schedule = entry.get("schedule")
        fields = schedule.split() if isinstance(schedule, str) else []
        if len(fields) != 5 or not all(CRON_FIELD_RE.match(f) for f in fields):
            raise SaltInvocationError(
                f"invalid cron:{name}:schedule {schedule!r}: must be five fields (minute hour day month "
                "weekday), like '0 3 * * *'"
            )
        if "command" not in entry:
            raise SaltInvocationError(f"cron:{name} has no command")
        command = command_fields(entry["command"], f"cron:{name}:command", COMMAND_FIELDS)
        result[name] = {"schedule": " ".join(fields), "command": command}
    return result


HOOK_STAGES = ("before_publish", "after_publish")


#: the keys of a hook entry: Salt's own guards (``creates``, ``unless``) skip the line when met
HOOK_KEYS = ("run", "once", "timeout", "creates", "unless", "migrates", "maintenance")
#: a hook line that migrates a Django database unless it says otherwise (``migrates: false``)
MIGRATE_RE = re.compile(r"\bmanage\.py\s+migrate\b")


def hooks(value, default_timeout=DEFAULTS["hook_timeout"]):
    """Pillar ``hooks``: per stage a list of {run, once, timeout}, from shell lines or such mappings."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SaltInvocationError(f"invalid hooks {value!r}: must map before_publish/after_publish to lists")
    unknown = set(value) - set(HOOK_STAGES)
    if unknown:
        raise SaltInvocationError(f"invalid hooks key(s) {sorted(unknown)}: use before_publish, after_publish")
    result = {}
    for stage in HOOK_STAGES:
        entries = value.get(stage) or []
        if not isinstance(entries, (list, tuple)):
            raise SaltInvocationError(f"invalid hooks:{stage} {entries!r}: must be a list of shell lines")
        result[stage] = []
        for entry in entries:
            if isinstance(entry, str):
                entry = {"run": entry, "once": False}
            shape = ("{run: <line>, once: true|false, timeout: <seconds>, creates: <path>, unless: <line>, "
                     "migrates: true|false, maintenance: true|false}")  # fmt: skip
            if isinstance(entry, dict) and set(entry) - set(HOOK_KEYS):
                key = sorted(set(entry) - set(HOOK_KEYS), key=str)[0]
                raise SaltInvocationError(_unknown(key, HOOK_KEYS, f"key {key!r} in hooks:{stage} entry {entry!r}"))
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("run"), str)
                or not entry["run"].strip()
                or "\0" in entry["run"]
                or not isinstance(entry.get("once", False), bool)
                or not isinstance(entry.get("migrates", False), bool)
                or not isinstance(entry.get("maintenance", False), bool)
            ):
                raise SaltInvocationError(f"invalid hooks:{stage} entry {entry!r}: must be a shell line or {shape}")
            creates, unless = entry.get("creates"), entry.get("unless")
            if creates is not None and (not isinstance(creates, str) or not creates.strip() or "\0" in creates):
                raise SaltInvocationError(
                    f"invalid hooks:{stage} creates {creates!r}: a path (in the release, or absolute) the line makes"
                )
            if unless is not None and (not isinstance(unless, str) or not unless.strip() or "\0" in unless):
                raise SaltInvocationError(f"invalid hooks:{stage} unless {unless!r}: a shell line")
            result[stage].append({"run": entry["run"], "once": entry.get("once", False),
                                  "timeout": seconds(entry.get("timeout", default_timeout), f"hooks:{stage} timeout"),
                                  "creates": creates, "unless": unless,
                                  "migrates": entry.get("migrates", bool(MIGRATE_RE.search(entry["run"]))),
                                  "maintenance": entry.get("maintenance", False)})  # fmt: skip
    return result


NOTIFY_EVENTS = ("deploy/start", "deploy/success", "deploy/failure", "rollback", "fleet/start", "fleet/prepare",
                 "fleet/publish", "fleet/restart", "fleet/canary", "fleet/failed", "fleet/undone", "fleet/end")  # fmt: skip
NOTIFY_DEFAULTS = {
    "events": ["deploy/*", "rollback", "fleet/start", "fleet/end"],
    "body": None,  # every field, as JSON; a template ("{host} deployed {release}"), or a mapping of them (JSON)
    "headers": {},
    "timeout": 5,
}
NOTIFY_FIELDS = ("event", "environment", "host", "hosts", "release", "revision", "subject", "user", "outcome",
                 "error", "run", "duration")  # fmt: skip


def notify(value):
    """Pillar ``notify``: a list of webhooks, each {url, events, body, headers, timeout}; a typo is named."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SaltInvocationError(f"invalid notify {value!r}: a list of webhooks, each {{url, events, body}}")
    webhooks = []
    for index, hook in enumerate(value):
        where = f"notify:{index}"
        if isinstance(hook, str):
            hook = {"url": hook}
        if not isinstance(hook, dict):
            raise SaltInvocationError(f"invalid {where} {hook!r}: a URL or {{url, events, body, headers, timeout}}")
        for key in hook:
            if key not in ("url", *NOTIFY_DEFAULTS):
                raise SaltInvocationError(_unknown(key, ("url", *NOTIFY_DEFAULTS), f"key {where}:{key}"))
        hook = dict(NOTIFY_DEFAULTS, **hook)
        url = hook.get("url")
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/]+\S*", url) or CONTROL_RE.search(url):
            raise SaltInvocationError(f"invalid {where}:url {mask_credentials(str(url))!r}: an http:// or https:// URL")
        events = hook["events"]
        if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
            raise SaltInvocationError(f"invalid {where}:events {events!r}: a list of {', '.join(NOTIFY_EVENTS)}")
        for event in events:
            if not fnmatch.filter(NOTIFY_EVENTS, event):
                close = difflib.get_close_matches(event, NOTIFY_EVENTS, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise SaltInvocationError(f"invalid {where}:events {event!r}: no such event; {hint}"
                                          f"events: {', '.join(NOTIFY_EVENTS)} (globs allowed: deploy/*)")  # fmt: skip
        body = hook["body"]
        for template in body.values() if isinstance(body, dict) else [body] if body is not None else []:
            if not isinstance(template, str):
                raise SaltInvocationError(f"invalid {where}:body {body!r}: a template, or a mapping of templates")
            template_fields(template, f"{where}:body", NOTIFY_FIELDS)
        headers = hook["headers"]
        if not isinstance(headers, dict) or not all(isinstance(v, str) and not CONTROL_RE.search(v)
                                                    for v in headers.values()):  # fmt: skip
            raise SaltInvocationError(f"invalid {where}:headers: a mapping of header names to one-line values")
        webhooks.append(dict(hook, timeout=seconds(hook["timeout"], f"{where}:timeout")))
    return webhooks


def seconds(value, what):
    """A positive, finite number of seconds (a float), or a clear error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise SaltInvocationError(f"invalid {what} {value!r}: must be a number of seconds > 0")
    return float(value)


def signal_name(value):
    """A signal's canonical name ('SIGTERM') from 'SIGTERM', 'term' or 15."""
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return signal.Signals(value).name
        name = value.strip().upper()
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"].name
    except (AttributeError, KeyError, ValueError):
        raise SaltInvocationError(
            f"invalid stop_signal {value!r}: must name a signal, like SIGTERM or SIGINT"
        ) from None


def env_module(env):
    """An environment's name as a Python module name: topics/foo -> topics_foo."""
    return re.sub(r"\W", "_", env)


def py_literal(value, key):
    """
    A pillar value as plain Python whose repr is valid source: pillar gives
    OrderedDicts (their repr needs an import) and YAML may give dates. Nested
    keys are sorted so that the file, and its hash, do not depend on pillar's order.
    """
    if isinstance(value, dict):
        return {k: py_literal(v, f"{key}[{k!r}]") for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [py_literal(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return value
    raise SaltInvocationError(
        f"invalid settings value {key} = {value!r}: use strings, numbers, booleans, null, lists and mappings"
    )


def settings_module(cfg):
    return cfg["settings_module"].format(env=env_module(cfg["environment"]))


#: mappings an environment (or a keyword argument) extends key by key instead of replacing
MERGED = ("settings", "env", "hooks", "supervisor", "database", "processes", "cron")

#: the mappings that may hold secrets: ``vumi.settings`` masks those of their values whose
#: name looks secret, or is listed in ``secret_env``, and the passwords of URLs
SECRET = ("settings", "env")

#: a name whose value is a secret wherever it appears (``SECRET_KEY``, ``DB_PASSWORD``, ``API_TOKEN``)
SECRET_NAME_RE = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE", re.I)

MASK = "**********"


def _shown(name, value, listed):
    if SECRET_NAME_RE.search(str(name)) or name in listed:
        return MASK
    if isinstance(value, dict):  # DATABASES: {default: {PASSWORD: ...}}
        return {k: _shown(k, v, listed) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shown(name, v, listed) for v in value]
    return mask_credentials(value) if isinstance(value, str) else value


def masked(cfg):
    """
    The settings as ``vumi.settings`` shows them: in ``env`` and ``settings`` the values
    whose name looks secret or is listed in ``secret_env`` masked, passwords in URLs masked
    everywhere; the other values shown (``DEBUG``, ``ALLOWED_HOSTS``, ``DB_HOST``).
    """
    names = set(cfg.get("secret_env") or ())
    shown = dict(cfg, **{key: _shown("", cfg[key], names) for key in SECRET if cfg.get(key)})
    shown["repo_url"] = mask_credentials(cfg["repo_url"])
    if cfg.get("database"):
        shown["database"] = dict(cfg["database"], url=mask_credentials(cfg["database"]["url"]))
        for key in ("password", "admin_password"):
            if shown["database"][key]:
                shown["database"][key] = MASK
    # a webhook's path or query is often its secret (Slack's, Teams'): only the site is shown
    shown["notify"] = [dict(h, url=_site(h["url"]), headers={k: MASK for k in h["headers"]})
                       for h in cfg.get("notify") or []]  # fmt: skip
    return shown


def _site(url):
    """A webhook's URL as shown: its site, the rest masked (a path or query is often its secret)."""
    site = re.match(r"https?://[^/?#]+", url).group(0)
    return mask_credentials(site) + (f"/{MASK}" if len(site) < len(url) else "")


#: the user-info part of a URL: ``https://user:password@host`` or ``https://token@host``
_USERINFO_RE = re.compile(r"(?<=://)([^/@\s:]*)(:[^/@\s]*)?@")


def mask_credentials(text):
    """``text`` with the password (or the token) of any URL in it replaced by ``****``."""
    return _USERINFO_RE.sub(lambda m: f"{m.group(1)}:****@" if m.group(2) else "****@", text)


def merge(branch, pillar, opts_vumi, overrides):
    """
    The settings of environment ``branch``: ``DEFAULTS``, then the minion's
    ``vumi`` options, then the ``vumi`` pillar, then its
    ``environments:<branch>``, then ``overrides`` (keyword arguments); validated.
    ``<app>:<env>`` is an environment of ``vumi:apps:<app>``: of ``vumi`` itself only
    ``HOST_KEYS``, then the app's settings, then its ``environments:<env>``.
    """
    app, branch = split_name(branch)
    env = check_name(branch, "environment")
    overrides = {k: v for k, v in overrides.items() if not k.startswith("__")}
    problems = schema_problems(opts_vumi, "minion option vumi") + schema_problems(pillar, "pillar vumi")
    problems += [_unknown(k, [d for d in DEFAULTS if d != "environments"], f"argument {k}") for k in overrides
                 if k not in DEFAULTS or k == "environments"]  # fmt: skip
    if problems:
        raise SaltInvocationError("; ".join(problems) if len(problems) == 1 else "\n".join(problems))
    cfg = copy.deepcopy({k: v for k, v in DEFAULTS.items() if k != "environments"})
    sources = [source for source in (opts_vumi, pillar) if isinstance(source, dict)]  # pillar wins
    if app is not None:  # the host's shared keys, then the app's own
        cfg.update({k: v for source in sources for k, v in source.items() if k in HOST_KEYS})
        sources = [(source.get("apps") or {}).get(app) for source in sources]
        sources = [dict({"app": app}, **source) for source in sources if isinstance(source, dict)]
        if not sources:
            known = [name for source in (opts_vumi, pillar) if isinstance(source, dict)
                     for name in (source.get("apps") or {})]  # fmt: skip
            raise SaltInvocationError(_unknown(app, known, f"app {app} (pillar vumi:apps:{app})"))
    environments = {}
    for source in sources:
        environments.update(source.get("environments") or {})
        cfg.update({k: v for k, v in source.items() if k in DEFAULTS and k != "environments"})
    own = environments.get(env) or {}
    for layer in (own, overrides):
        for key, value in layer.items():
            if key not in DEFAULTS or key == "environments":
                continue
            if key in MERGED and isinstance(value, dict) and isinstance(cfg.get(key), dict):
                value = dict(cfg[key], **value)  # per environment, key by key over the global mapping
            cfg[key] = value
    cfg["environment"] = env
    cfg["branch"] = cfg["branch"] or env
    return validate(cfg)
