"""``salt/_utils/vumi_environment.py``: what a process of a release finds in its environment."""

import os

import pytest
from salt.exceptions import SaltInvocationError

import vumi_environment
import vumi_settings

RELEASE = "20261205_120000"


def test_the_database_reaches_the_app_as_a_url_and_as_the_parts_it_reads(cfg, paths):
    pillar = {"base_dir": cfg["base_dir"], "user": cfg["user"], "app": "hc",
              "database": {"password": "s3cret/+", "host": "db.internal",
                           "env": {"DB_HOST": "host", "DB_PORT": "port", "DB_NAME": "name", "DB_USER": "user",
                                   "DB_PASSWORD": "password"}}}  # fmt: skip
    cfg = vumi_settings.merge("staging", pillar, None, {})
    os.makedirs(paths.code(RELEASE))
    env = vumi_environment.for_release(cfg, paths, RELEASE)
    assert env["DATABASE_URL"] == "postgres://hc_staging:s3cret%2F%2B@db.internal:5432/hc_staging"
    assert {k: env[k] for k in ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD")} == {
        "DB_HOST": "db.internal", "DB_PORT": "5432", "DB_NAME": "hc_staging", "DB_USER": "hc_staging",
        "DB_PASSWORD": "s3cret/+"}  # fmt: skip
    # shown by vumi.settings: the mapping of names to parts, and no password
    shown = vumi_settings.masked(cfg)["database"]
    assert shown["env"]["DB_PASSWORD"] == "password" and "s3cret" not in str(shown)


@pytest.mark.parametrize(
    "env, said",
    [
        ({"DB_PASS": "passwd"}, "invalid database:env DB_PASS: 'passwd': one of host, port, name, user, password, url"),
        ({"db-host": "host"}, "invalid database:env variable 'db-host'"),
        (["DB_HOST"], "invalid database:env ['DB_HOST']"),
    ],
)
def test_a_database_env_that_names_no_part_is_refused(cfg, env, said):
    with pytest.raises(SaltInvocationError) as caught:
        vumi_settings.merge("staging", {"database": {"password": "x", "env": env}}, None, {})
    assert said in str(caught.value)
