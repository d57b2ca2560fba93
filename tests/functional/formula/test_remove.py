"""
``vumi.remove`` and the ``vumi.absent`` state on a host where two environments of the
real Django sample were deployed by ``state.apply vumi`` with everything an operator
turns on: webapp ports under the session's supervisord, an nginx site each (checked by
the real nginx), a PostgreSQL database and role each. Removing one leaves nothing of
it on the host, listed by what an operator would look at, and the other still serves.
(Workers and cron entries: issue #25 brings them, and their removal with them.)
"""

import os
import secrets

import pytest
from salt.exceptions import CommandExecutionError

from support.helpers import env_root, http_get
from support.postgres import NEEDS_POSTGRES_AND_NGINX

pytestmark = NEEDS_POSTGRES_AND_NGINX


@pytest.fixture
def host(loaders, vumi_config, supervisor, postgres, tmp_path, free_port, base_dir, webapps):
    """staging and production deployed, each with two ports, a site and a database."""
    prefix = "rm" + secrets.token_hex(4)
    sites = tmp_path / "sites"
    sites.mkdir()
    ports = {"staging": [free_port(), free_port()], "production": [free_port(), free_port()]}
    pillar = {
        "vumi": {
            "deploy": ["staging", "production"],
            "database": postgres.database_settings("pw", name=prefix + "_{env}", user=prefix + "_{env}"),
            "hooks": {"before_publish": ["./manage.py migrate --noinput"]},
            "nginx": {"enabled": True, "listen": f"127.0.0.1:{free_port()}", "server_name": "localhost",
                      "conf_dir": str(sites), "manage_package": False, "manage_service": False},
            "environments": {env: {"ports": p} for env, p in ports.items()},
        },
    }  # fmt: skip
    webapps.extend((env, port) for env, p in ports.items() for port in p)
    ret = loaders.modules.state.apply("vumi", pillar=pillar)
    assert not ret.errors and all(state.result is True for state in ret), ret.raw
    for port in ports["staging"] + ports["production"]:
        assert http_get(port)[0] == 200

    def on_host(env):
        """What of ``env`` an operator finds on the host, by where they would look."""
        sql = "SELECT {0} FROM {1} WHERE {0} = '" + f"{prefix}_{env}" + "'"
        group = f"vumi-{env}"
        return {
            "tree": os.path.exists(env_root(base_dir, env)),
            "logs": os.path.exists(base_dir / "vumi" / ".logs" / env),
            "supervisor programs": [
                p["name"] for p in supervisor.rpc().supervisor.getAllProcessInfo() if p["group"] == group
            ],  # fmt: skip
            "supervisor file": os.path.exists(supervisor.conf_dir / f"{group}.conf"),
            "nginx site": os.path.exists(sites / f"{group}.conf"),
            "database": postgres.psql(sql.format("datname", "pg_database")),
            "role": postgres.psql(sql.format("rolname", "pg_roles")),
            "ports answering": [p for p in ports[env] if _answers(p)],
        }

    # what the module reads when called on its own: the host's pillar and this run's, merged
    pillar["vumi"] = dict(vumi_config, **pillar["vumi"])
    return loaders, pillar, ports, on_host, prefix


def _answers(port):
    try:
        return http_get(port)[0] == 200
    except OSError:
        return False


def test_remove_leaves_nothing_of_the_environment_and_the_other_still_serves(host):
    loaders, pillar, ports, on_host, prefix = host
    vumi = loaders.modules.vumi
    db = f"{prefix}_staging"
    root = vumi.paths("staging", vumi_pillar=pillar["vumi"])["root"]
    nothing = {"tree": False, "logs": False, "supervisor programs": [], "supervisor file": False,
               "nginx site": False, "database": "", "role": "", "ports answering": []}  # fmt: skip

    # listed first, nothing touched
    listed = vumi.remove("staging", database=True, test=True, vumi_pillar=pillar["vumi"])
    assert listed["removed"] == [] and listed["kept"] == [], listed
    kinds = [line.split(": ", 1)[0] for line in listed["would_remove"]]
    assert kinds == ["supervisor"] * 3 + ["nginx", "tree", "logs", "database", "role"], listed
    assert f"tree: {root}" in listed["would_remove"] and f"database: {db}" in listed["would_remove"]
    assert on_host("staging")["ports answering"] == ports["staging"]

    # refused while frozen: the operator's freeze holds for removal too
    vumi.lock("staging", reason="incident 7", vumi_pillar=pillar["vumi"])
    with pytest.raises(CommandExecutionError, match=r"staging is not removed: locked by .* incident 7"):
        vumi.remove("staging", vumi_pillar=pillar["vumi"])
    assert on_host("staging")["tree"]
    vumi.unlock("staging", vumi_pillar=pillar["vumi"])

    # without database=True, the database and role are kept, and said so
    res = vumi.remove("staging", vumi_pillar=pillar["vumi"])
    assert res["removed"] == listed["would_remove"][:-2], res
    assert res["kept"] == [
        f"database {db} and role {db} (database=True drops them)",
        "nginx still serves the site until reloaded (vumi:nginx:manage_service is false)",
    ], res
    left = on_host("staging")
    assert left == dict(nothing, database=db, role=db), left
    assert not any(_answers(p) for p in ports["staging"])

    # again, with the database: only it and its role were left
    again = vumi.remove("staging", database=True, vumi_pillar=pillar["vumi"])
    assert again["removed"] == [f"database: {db}", f"role: {db}"], again
    assert on_host("staging") == nothing
    assert vumi.remove("staging", database=True, vumi_pillar=pillar["vumi"])["removed"] == []

    # the other environment still serves, from its own tree and database
    other = on_host("production")
    assert other["tree"] and other["nginx site"] and other["database"] == f"{prefix}_production", other
    assert other["ports answering"] == ports["production"]


def test_the_absent_state_predicts_then_removes(host):
    loaders, pillar, ports, on_host, _ = host
    state = loaders.modules.state.single("vumi.absent", "production", database=True, test=True, pillar=pillar)
    assert state.result is None and len(state.changes["removed"]) == 8, state.raw
    assert on_host("production")["ports answering"] == ports["production"]  # predicted, nothing touched

    state = loaders.modules.state.single("vumi.absent", "production", database=True, pillar=pillar)
    assert state.result is True and state.changes["removed"], state.raw
    assert not on_host("production")["tree"] and on_host("production")["database"] == ""
    again = loaders.modules.state.single("vumi.absent", "production", database=True, pillar=pillar)
    assert again.result is True and not again.changes, again.raw
    assert again.comment.startswith("production is not on this host")
    assert on_host("staging")["ports answering"] == ports["staging"]
