"""
The real Django sample app on gunicorn, against a real PostgreSQL (Debian's binaries,
a cluster of the test's own on a loopback port, run as an unprivileged user), through
``state.apply vumi`` the way an operator runs it: ``salt/vumi/database.sls`` makes the
role and database with Salt's ``postgres_*`` states, the ``before_publish`` hooks run
``migrate`` and ``collectstatic`` in the new release before the switch, and the pages
read their rows from PostgreSQL with no manual step. A new commit with a migration is
then rolled out behind a real nginx under load.
"""

import getpass
import secrets
import time

import pytest

import make_repo as sample
from support.helpers import http_get, loaders_for, pillar_tree
from support.nginx import Load, Nginx
from support.postgres import NEEDS_POSTGRES_AND_NGINX

ENV = "staging"

pytestmark = NEEDS_POSTGRES_AND_NGINX

MIGRATION = """from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]

    operations = [
        migrations.AddField(model_name="visit", name="agent", field=models.CharField(max_length=200, default="")),
    ]
"""


@pytest.fixture
def site(minion_opts, vumi_config, postgres, tmp_path, free_port):
    """A pillar like an operator's: the database, the migrate and collectstatic hooks, two ports, nginx."""
    ports = [free_port(), free_port()]
    nginx_port = free_port()
    name = "vumi_" + secrets.token_hex(4)  # each test its own role and database on the module's server
    sites = tmp_path / "sites"
    sites.mkdir()
    override = dict(
        {"user": getpass.getuser()},  # unless the environments are a deploy user's
        **vumi_config,
        database=postgres.database_settings(
            "s3cret pass/word", name=name, user=name,
            env={"DB_HOST": "host", "DB_PORT": "port", "DB_NAME": "name", "DB_USER": "user", "DB_PASSWORD": "password"},
        ),  # fmt: skip
        hooks={"before_publish": ["./manage.py migrate --noinput", "./manage.py collectstatic --noinput"]},
        nginx={
            "enabled": True, "listen": f"127.0.0.1:{nginx_port}", "server_name": "localhost",
            "conf_dir": str(sites), "static": "public/static", "manage_package": False, "manage_service": False,
        },
        environments={ENV: {"ports": ports}},
    )  # fmt: skip
    pillar_dir = pillar_tree(tmp_path / "pillar", override, envs=(ENV,))
    (tmp_path / "nginx" / "temp").mkdir(parents=True)
    server = Nginx(tmp_path / "nginx", nginx_port, sites)
    with loaders_for(minion_opts, vumi_config, pillar_dir) as loaders:
        try:
            yield loaders, ports, server, name, override
        finally:
            server.stop()


def apply(loaders):
    ret = loaders.modules.state.apply("vumi", pillar={"branch": ENV})
    assert not ret.errors, ret.errors
    return {state.id: state for state in ret}


def test_first_deploy_migrates_before_the_switch_and_serves_rows_from_postgres(site, postgres, webapps):
    loaders, ports, nginx, db, _ = site
    began = time.monotonic()
    states = apply(loaders)
    took = time.monotonic() - began
    failed = {k: s.comment for k, s in states.items() if s.result is not True}
    assert not failed, failed
    print(f"\n[database] first deploy of the Django sample app (state.apply vumi): {took:.1f}s")

    # Salt's own states made the role and the database, owned by the role
    assert states[f"vumi-{ENV}-database-role"].changes
    assert postgres.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'") == db
    # migrate ran in the new release before the switch: the table is there, on PostgreSQL
    assert postgres.psql("SELECT count(*) FROM django_migrations WHERE app = 'pages'", db) == "1"
    hooks = states[f"vumi-{ENV}-deployed"].changes["hooks"]["new"]
    assert set(hooks) == {"before_publish[0]", "before_publish[1]"}, hooks

    # the pages read rows from PostgreSQL, on every port, with no manual step
    for n, port in enumerate(ports, 1):
        status, body = http_get(port, "/visits/")
        assert status == 200 and body["database"] == "postgresql" and body["visits"] == n, body
    assert postgres.psql("SELECT count(*) FROM pages_visit", db) == "2"
    # collectstatic ran too: nginx serves the release's static files
    nginx.start()
    assert http_get(nginx.port, "/static/pages/site.css")[0] == 200

    # the parts reach the app's processes too (database:env): a client that reads them apart logs in
    connect = ("import os, psycopg; e = os.environ; print(psycopg.connect(host=e['DB_HOST'], port=e['DB_PORT'], "
               "dbname=e['DB_NAME'], user=e['DB_USER'], password=e['DB_PASSWORD']).execute('SELECT current_user')"
               ".fetchone()[0])")  # fmt: skip
    assert loaders.modules.vumi.execute(ENV, f'python -c "{connect}"')["stdout"] == db

    # the password never shows: vumi.settings masks it, the URL included
    shown = loaders.modules.vumi.settings(ENV)["database"]
    assert shown["password"] == "**********" and "s3cret" not in str(shown)

    # again: nothing to do (the role, the database, the release are there)
    again = apply(loaders)
    assert all(s.result is True and not s.changes for s in again.values()), {
        k: s.changes for k, s in again.items() if s.changes
    }


def test_a_new_migration_rolls_out_behind_nginx_with_no_failed_request(site, postgres, webapps):
    loaders, ports, nginx, db, override = site
    assert all(s.result for s in apply(loaders).values())
    nginx.start()
    old = loaders.modules.vumi.current(ENV)
    repo = override["repo_url"]
    sha = sample.commit_file(repo, ENV, "pages/migrations/0002_visit_agent.py", MIGRATION, "a migration")
    model = sample.commit_file(
        repo, ENV, "pages/models.py",
        (sample.APP_DIR / "pages" / "models.py").read_text() + '    agent = models.CharField(max_length=200, default="")\n',
        "the model's new field",
    )  # fmt: skip
    with Load(nginx.port) as load:
        load.wait_for(50)
        began = time.monotonic()
        states = apply(loaders)
        took = time.monotonic() - began
        load.wait_for(50)
    print(
        f"\n[database] code-only redeploy with a migration hook: {took:.1f}s; through nginx: "
        f"requests sent {load.sent}, failed {len(load.failed)}"
    )
    assert all(s.result for s in states.values()), {k: s.comment for k, s in states.items() if not s.result}
    assert load.failed == [], load.failed[:5]
    new = loaders.modules.vumi.current(ENV)
    assert new["release"] != old["release"] and new["revision"] == model != sha  # the model commit came after
    assert postgres.psql("SELECT count(*) FROM django_migrations WHERE app = 'pages'", db) == "2"
    # the last answers of the load (after the roll) all came from the new release
    last = load.answers[-20:]
    assert len(last) == 20 and {a[2] for a in last} == {new["release"]}, last


def test_a_failing_migration_leaves_current_and_the_old_webapp_serving(site, postgres, webapps):
    loaders, ports, _, db, override = site
    assert all(s.result for s in apply(loaders).values())
    old = loaders.modules.vumi.current(ENV)
    pids = {p: http_get(p)[1]["ppid"] for p in ports}
    bad = MIGRATION.replace(
        "migrations.AddField(", 'migrations.RunSQL("SELECT * FROM no_such_table"),\n        migrations.AddField('
    )
    sample.commit_file(override["repo_url"], ENV, "pages/migrations/0002_visit_agent.py", bad, "a broken migration")
    states = apply(loaders)
    deployed = states[f"vumi-{ENV}-deployed"]
    assert deployed.result is False
    assert "failed at stage 'hooks'" in deployed.comment and "no_such_table" in deployed.comment
    assert loaders.modules.vumi.current(ENV)["release"] == old["release"]
    for port in ports:
        status, body = http_get(port)
        assert status == 200 and body["release"] == old["release"] and body["ppid"] == pids[port]
    assert postgres.psql("SELECT count(*) FROM django_migrations WHERE app = 'pages'", db) == "1"
