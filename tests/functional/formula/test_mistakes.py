"""
An operator's mistakes, each walked through ``state.apply vumi`` the way it is made
(a key one letter off at every depth, a bad value, a misspelt branch, a wrong
``repo_url``, a supervisord that is not there, an interpreter that does not run, a
requirements file the commit lacks, a site nginx refuses), on a host with the real
parts a deploy touches: a PostgreSQL server, nginx's site folder (sites checked by the
real nginx), the session's supervisord. Each is named by the exact message an operator
reads, and nothing of the environment is made: no folder under ``base_dir``, no
supervisor program (of a port or of a worker), no nginx site, no PostgreSQL role or
database; no state changes anything. The sound pillar has a worker and a cron job; the
deploy user's crontab is compared too when that user is not root: in the pass as a throw-away
user (tests/functional/DEPLOY_USER_TESTS). Tests read no crontab of root's.
"""

import copy
import getpass
import re
import secrets
import shutil
import subprocess

import pytest

import make_repo as sample
from support.postgres import NEEDS_POSTGRES_AND_NGINX

ENV = "staging"

pytestmark = NEEDS_POSTGRES_AND_NGINX


def merged(base, change):
    """``base`` with ``change`` laid over it, mapping by mapping (None deletes a key)."""
    out = copy.deepcopy(base)
    for key, value in change.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def crontab(user):
    if not shutil.which("crontab"):
        return None
    proc = subprocess.run(["crontab", "-l", "-u", user], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


@pytest.fixture
def host(loaders, vumi_config, supervisor, postgres, tmp_path, free_port, base_dir):
    """The pillar of a sound deploy with a database and nginx, and what the host holds of it."""
    prefix = "mk" + secrets.token_hex(4)
    sites = tmp_path / "sites"
    sites.mkdir()
    pillar = {
        "branch": ENV,
        "vumi": {
            "database": postgres.database_settings("pw", name=prefix + "_{env}", user=prefix + "_{env}"),
            "nginx": {"enabled": True, "listen": f"127.0.0.1:{free_port()}", "server_name": "localhost",
                      "conf_dir": str(sites), "manage_package": False, "manage_service": False},
            "environments": {ENV: {"ports": [free_port()]}},
            "processes": {"worker": "{venv}/bin/python -c 'import time; time.sleep(600)'"},
            "cron": {"nightly": {"schedule": "0 3 * * *", "command": "{venv}/bin/python manage.py showsettings"}},
        },
    }  # fmt: skip
    user = vumi_config.get("user", getpass.getuser())

    def made():
        """What of the environment is on the host: folders, programs, sites, roles, databases."""
        sql = "SELECT {0} FROM {1} WHERE {0} LIKE '" + prefix + "%'"
        return {
            "base_dir": sorted(p.name for p in base_dir.iterdir()),
            "supervisor": sorted(p.name for p in supervisor.conf_dir.iterdir()),
            "nginx": sorted(p.name for p in sites.iterdir()),
            "roles": postgres.psql(sql.format("rolname", "pg_roles")),
            "databases": postgres.psql(sql.format("datname", "pg_database")),
            "crontab": crontab(user) if user != "root" else None,
        }

    return loaders, pillar, made


def said(ret):
    """What the operator reads first: the render error, else the first failed state's own message."""
    if ret.errors:
        return "\n".join(ret.errors)
    for state in sorted(ret, key=lambda s: s.full_return["__run_num__"]):
        if state.result is False and not state.comment.startswith(("One or more requisite failed", "Failed due to")):
            # under test=True, Salt's test.fail_without_changes says only that it would fail: the name says why
            return state.name if state.comment.startswith("If we weren't testing") else state.comment
    return None


NGINX_LISTEN = {"vumi": {"nginx": {"listen": "127.0.0.1:notaport"}}}

# (id, the change to the sound pillar, what the operator reads)
MISTAKES = [
    # a key one letter off, at every depth of pillar vumi
    (
        "top",
        {"vumi": {"requirments": "requirements.txt"}},
        "unknown key pillar vumi:requirments; did you mean requirements?",
    ),
    (
        "top-section",
        {"vumi": {"databse": {"password": "pw"}}},
        "unknown key pillar vumi:databse; did you mean database?",
    ),
    (
        "supervisor",
        {"vumi": {"supervisor": {"conf_fil": "/etc/supervisord.conf"}}},
        "unknown key pillar vumi:supervisor:conf_fil; did you mean conf_file?",
    ),
    (
        "database",
        {"vumi": {"database": {"pasword": "pw"}}},
        "unknown key pillar vumi:database:pasword; did you mean password?",
    ),
    (
        "hooks",
        {"vumi": {"hooks": {"before_publsh": ["./manage.py migrate"]}}},
        "unknown key pillar vumi:hooks:before_publsh; did you mean before_publish?",
    ),
    ("nginx", {"vumi": {"nginx": {"enabeld": True}}}, "unknown key pillar vumi:nginx:enabeld; did you mean enabled?"),
    ("sls", {"vumi": {"sls": {"webap": False}}}, "unknown key pillar vumi:sls:webap; did you mean webapp?"),
    (
        "env",
        {"vumi": {"environments": {ENV: {"prots": [8000]}}}},
        "unknown key pillar vumi:environments:staging:prots; did you mean ports?",
    ),
    (
        "env-database",
        {"vumi": {"environments": {ENV: {"database": {"hots": "db"}}}}},
        "unknown key pillar vumi:environments:staging:database:hots; did you mean host?",
    ),
    (
        "env-nginx",
        {"vumi": {"environments": {ENV: {"nginx": {"lisen": 8080}}}}},
        "unknown key pillar vumi:environments:staging:nginx:lisen; did you mean listen?",
    ),
    (
        "env-hooks",
        {"vumi": {"environments": {ENV: {"hooks": {"after_pubish": []}}}}},
        "unknown key pillar vumi:environments:staging:hooks:after_pubish; did you mean after_publish?",
    ),
    (
        "env-supervisor",
        {"vumi": {"environments": {ENV: {"supervisor": {"start_retires": 3}}}}},
        "unknown key pillar vumi:environments:staging:supervisor:start_retires; did you mean start_retries?",
    ),
    (
        "env-global-key",
        {"vumi": {"environments": {ENV: {"deploy": [ENV]}}}},
        "pillar vumi:environments:staging:deploy: set deploy at the top of pillar vumi, not per environment",
    ),
    # a value that cannot be
    (
        "port-range",
        {"vumi": {"environments": {ENV: {"ports": [70000]}}}},
        "invalid port 70000: must be an integer 1-65535",
    ),
    (
        "port-word",
        {"vumi": {"environments": {ENV: {"ports": ["eighty"]}}}},
        "invalid port 'eighty': must be an integer 1-65535",
    ),
    (
        "app-name",
        {"vumi": {"app": "my app"}},
        "invalid app 'my app': use letters, digits, '.', '_', '-' and '/' between parts; no '..', no leading '/' or '-', no spaces or shell characters",
    ),
    ("no-user", {"vumi": {"user": "vumi-nosuchuser"}}, "user 'vumi-nosuchuser' does not exist"),
    # processes and cron jobs (workers.md)
    (
        "process-name",
        {"vumi": {"processes": {"celery worker": "celery worker"}}},
        "invalid process name 'celery worker': a letter, then up to 39 letters, digits, '_' or '-' (no spaces, "
        "no '/'; a name of digits is a port's program)",
    ),
    (
        "numprocs-text",
        {"vumi": {"environments": {ENV: {"processes": {"worker": {"command": "x", "numprocs": "2"}}}}}},
        "invalid processes:worker:numprocs '2': must be an integer from 1 to 64",
    ),
    (
        "process-field",
        {"vumi": {"processes": {"worker": "{vnv}/bin/celery worker"}}},
        "invalid processes:worker:command '{{vnv}}/bin/celery worker': {{vnv}} is not a field; did you mean {{venv}}? "
        "use {{host}}, {{settings}}, {{env}}, {{branch}}, {{code}}, {{venv}}, {{current}}, {{wsgi}}",
    ),
    (
        "cron-schedule",
        {"vumi": {"cron": {"clearsessions": {"schedule": "0 3 * *", "command": "./manage.py clearsessions"}}}},
        "invalid cron:clearsessions:schedule '0 3 * *': must be five fields (minute hour day month weekday), "
        "like '0 3 * * *'",
    ),
    (
        "base-dir-relative",
        {"vumi": {"base_dir": "srv"}},
        "invalid base_dir 'srv': must be an absolute path other than /",
    ),
    (
        "database-password",
        {"vumi": {"database": {"password": None}}},
        "invalid database:password: must be a non-empty string (the role's password)",
    ),
    (
        "database-name",
        {"vumi": {"database": {"name": "drop table"}}},
        "invalid database:name 'drop table': letters, digits and _ (at most 63)",
    ),
    (
        "stop-signal",
        {"vumi": {"stop_signal": "SIGFOO"}},
        "invalid stop_signal 'SIGFOO': must name a signal, like SIGTERM or SIGINT",
    ),
    (
        "hook-not-text",
        {"vumi": {"hooks": {"before_publish": [5]}}},
        "invalid hooks:before_publish entry 5: must be a shell line or "
        "{{run: <line>, once: true|false, timeout: <seconds>, creates: <path>, unless: <line>, "
        "migrates: true|false, maintenance: true|false}}",
    ),
    (
        "branch-escapes",
        {"branch": "../etc"},
        "invalid environment '../etc': use letters, digits, '.', '_', '-' and '/' between parts; no '..', no leading '/' or '-', no spaces or shell characters",
    ),
    # what the host or the remote says
    (
        "misspelt-branch",
        {"branch": "stagin"},
        "stagin cannot be deployed; nothing of it was made: repository: branch 'stagin' not found in {repo}",
    ),
    (
        "wrong-repo-url",
        {"vumi": {"repo_url": "/nonexistent/app.git"}},
        "staging cannot be deployed; nothing of it was made: repository: git ls-remote /nonexistent/app.git failed (exit 128): fatal: '/nonexistent/app.git' does not appear to be a git repository\nfatal: Could not read from remote repository.\n\nPlease make sure you have the correct access rights\nand the repository exists.",
    ),
    (
        "unknown-pin",
        {"vumi": {"revision": "v9.9"}},
        "staging cannot be deployed; nothing of it was made: repository: revision 'v9.9' not found in {repo}: no such tag or branch",
    ),
    (
        "conf-file",
        {"vumi": {"supervisor": {"conf_file": "/nonexistent/supervisord.conf"}}},
        "staging cannot be deployed; nothing of it was made: supervisor: cannot read supervisord's config /nonexistent/supervisord.conf: [Errno 2] No such file or directory: '/nonexistent/supervisord.conf'",
    ),
    (
        "interpreter",
        {"vumi": {"python": "/nonexistent/python3"}},
        "staging cannot be deployed; nothing of it was made: interpreter: /nonexistent/python3 does not exist for {user}: set vumi:python to an interpreter it can run",
    ),
    (
        "requirements",
        {"vumi": {"requirements": "requirements-prod.txt"}},
        "staging cannot be deployed; nothing of it was made: requirements: requirements-prod.txt is not in {tip12} (staging)",
    ),
    (
        "database-down",
        {"vumi": {"database": {"port": 1}}},
        "staging cannot be deployed; nothing of it was made: database: PostgreSQL on 127.0.0.1:1 does not answer "
        "(as vumi_admin)",
    ),
    (
        "nginx-config",
        {"vumi": {"nginx": {"test_cmd": "nginx -t -q -e stderr -c /nonexistent/nginx.conf"}}},
        re.compile(
            r"staging cannot be deployed; nothing of it was made: nginx: nginx -t -q -e stderr -c "
            r"/nonexistent/nginx.conf fails: \S+ \S+ \[emerg\] \d+#\d+: open\(\) \"/nonexistent/nginx.conf\" "
            r"failed \(2: No such file or directory\)\nnginx: configuration file /nonexistent/nginx.conf test failed"
        ),
    ),
    (
        "shared-file",
        {"vumi": {"shared_files": [".env"]}},
        "staging cannot be deployed; nothing of it was made: shared: shared files missing: .env; shared dirs to be made: logs, tmp",
    ),
    # nginx's own words, from `nginx -t` on the new site (Salt runs the check when applying, not under test=True)
    (
        "nginx-listen",
        NGINX_LISTEN,
        re.compile(
            r'check_cmd execution failed\n.*\[emerg\] .*invalid port in "127\.0\.0\.1:notaport" of the "listen" directive'
            r" in \S+\nnginx: configuration file \S+ test failed",
            re.S,
        ),
    ),
    (
        "nginx-no-ports",
        {"vumi": {"environments": {ENV: {"ports": []}}}},
        "nginx needs at least one webapp port: set vumi:environments:staging:ports",
    ),
    (
        "nginx-half-tls",
        {"vumi": {"nginx": {"ssl_certificate": "/etc/ssl/certs/x.pem"}}},
        "nginx: ssl_certificate and ssl_certificate_key go together: set both, or neither",
    ),
    (
        "nginx-static",
        {"vumi": {"nginx": {"static": "../../etc"}}},
        "invalid vumi:nginx:static ../../etc: must be a folder inside the code",
    ),
]


@pytest.mark.parametrize("change, message", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_named_and_nothing_is_made(host, vumi_config, repo, change, message):
    loaders, pillar, made = host
    tip = sample.git(repo, "rev-parse", ENV)
    nginx_says = isinstance(message, re.Pattern)  # its words carry a time and a pid
    if not nginx_says:
        message = message.format(repo=repo, user=vumi_config.get("user", getpass.getuser()), tip12=tip[:12])
    nothing = made()
    # predicted, then met, the same way (the site's own `nginx -t` runs only when applying)
    for test in (False,) if change == NGINX_LISTEN else (True, False):
        ret = loaders.modules.state.apply("vumi", pillar=merged(pillar, change), test=test)
        if nginx_says:
            assert message.fullmatch(said(ret)), ret.raw
        else:
            assert said(ret) == message, ret.raw
        assert not ret.errors and not any(state.result is True and state.changes for state in ret), ret.raw
        assert made() == nothing
