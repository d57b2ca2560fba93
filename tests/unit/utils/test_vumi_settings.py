"""``salt/_utils/vumi_settings.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import pathlib
import re

import pytest
import yaml
from salt.exceptions import SaltInvocationError

import vumi_settings

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_settings_precedence_and_mappings_merged_key_by_key():
    pillar = {"env": {"A": "global", "B": "global"}, "ports": [1],
              "environments": {"staging": {"env": {"B": "staging"}, "ports": [2]}}}  # fmt: skip
    cfg = vumi_settings.merge("staging", pillar, {"ports": [0]}, {"env": {"C": 3}})
    assert cfg["env"] == {"A": "global", "B": "staging", "C": "3"} and cfg["ports"] == [2]
    assert cfg["environment"] == "staging" and cfg["branch"] == "staging"
    assert vumi_settings.masked(cfg)["env"] == {"A": "global", "B": "staging", "C": "3"}


def test_secrets_are_masked_and_settings_are_not():
    pillar = {
        "env": {"DEBUG": "1", "DB_HOST": "db", "DB_PASSWORD": "pw1", "API_TOKEN": "t", "STRIPE_LIVE": "sk",
                "DATABASE_URL": "postgres://app:pw2@db/app"},
        "secret_env": ["STRIPE_LIVE"],
        "settings": {"SECRET_KEY": "k", "ALLOWED_HOSTS": ["a.example"], "DATABASES": {"default": {"HOST": "db",
                     "PASSWORD": "pw3"}}, "BROKER": ["amqp://u:pw4@mq//"]},
    }  # fmt: skip
    shown = vumi_settings.masked(vumi_settings.merge("staging", pillar, None, {}))
    assert shown["env"] == {"DEBUG": "1", "DB_HOST": "db", "DB_PASSWORD": "**********", "API_TOKEN": "**********",
                            "STRIPE_LIVE": "**********", "DATABASE_URL": "postgres://app:****@db/app"}  # fmt: skip
    assert shown["settings"] == {"SECRET_KEY": "**********", "ALLOWED_HOSTS": ["a.example"],
                                 "DATABASES": {"default": {"HOST": "db", "PASSWORD": "**********"}},
                                 "BROKER": ["amqp://u:****@mq//"]}  # fmt: skip
    assert not any(secret in str(shown) for secret in ("pw1", "pw2", "pw3", "pw4", "sk"))
    for bad in ("STRIPE_LIVE", [1], ["A-B"]):
        with pytest.raises(SaltInvocationError, match=f"invalid secret_env {re.escape(repr(bad))}"):
            vumi_settings.merge("staging", dict(pillar, secret_env=bad), None, {})


def test_hooks_are_normalised_and_bad_ones_named():
    assert vumi_settings.hooks({"before_publish": ["a", {"run": "b", "once": True, "timeout": 5}]}, 60) == {
        "before_publish": [{"run": "a", "once": False, "timeout": 60.0, "creates": None, "unless": None,
                            "migrates": False, "maintenance": False},
                           {"run": "b", "once": True, "timeout": 5.0, "creates": None, "unless": None,
                            "migrates": False, "maintenance": False}],
        "after_publish": []}  # fmt: skip
    # a migrate line migrates unless it says not; any line may say it does
    migrating = vumi_settings.hooks({"before_publish": ["./manage.py migrate --noinput", {"run": "x", "migrates": True},
                                                        {"run": "python manage.py migrate", "migrates": False}]})  # fmt: skip
    assert [h["migrates"] for h in migrating["before_publish"]] == [True, True, False]
    with pytest.raises(SaltInvocationError, match="migrates: true|false"):
        vumi_settings.hooks({"before_publish": [{"run": "x", "migrates": "yes"}]})
    with pytest.raises(SaltInvocationError, match="hooks:after_publish entry"):
        vumi_settings.hooks({"after_publish": [{"run": "x", "when": "always"}]})
    for bad in (0, -1, "10", True, float("nan"), float("inf")):
        with pytest.raises(SaltInvocationError, match="invalid hooks:before_publish timeout"):
            vumi_settings.hooks({"before_publish": [{"run": "x", "timeout": bad}]})
    with pytest.raises(SaltInvocationError, match="invalid hook_timeout"):
        vumi_settings.merge("staging", {"hook_timeout": 0}, None, {})


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://deploy:hunter2@git.example.org/app.git", "https://deploy:****@git.example.org/app.git"),
        ("https://ghp_token123@github.com/me/app.git", "https://****@github.com/me/app.git"),
        ("git clone ssh://git@host/app.git failed", "git clone ssh://****@host/app.git failed"),
        ("/srv/git/app.git", "/srv/git/app.git"),
        ("git@github.com:me/app.git", "git@github.com:me/app.git"),  # scp form: a user name, no secret
    ],
)
def test_credentials_in_urls_are_masked(url, shown):
    assert vumi_settings.mask_credentials(url) == shown


def test_every_key_has_one_entry_in_the_settings_reference():
    keys = set(vumi_settings.KNOWN)
    keys |= {f"{group}:{k}" for group, known in vumi_settings.NESTED.items() if group != "hooks" for k in known}
    text = (REPO / "docs" / "settings-reference.md").read_text()
    entries = re.findall(r"^### `([a-z_:]+)`$", text, re.M)
    assert sorted(entries) == sorted(set(entries)), "a key with two entries"
    assert set(entries) == keys, f"undocumented: {keys - set(entries)}; documented but unknown: {set(entries) - keys}"


def test_the_formulas_keys_are_those_of_its_defaults():
    formula = yaml.safe_load((REPO / "salt" / "vumi" / "defaults.yaml").read_text())
    assert set(formula) == {"sls", "nginx"}
    assert set(formula["sls"]) == set(vumi_settings.SLS_KEYS)
    assert formula["nginx"] == vumi_settings.NGINX_DEFAULTS  # what vumi.remove reads of the site: the same


@pytest.mark.parametrize(
    "pillar, said",
    [
        ({"requirments": "x"}, "unknown key vumi:requirments; did you mean requirements?"),
        ({"supervisor": {"conf_fiel": "/x"}}, "unknown key vumi:supervisor:conf_fiel; did you mean conf_file?"),
        ({"database": {"pasword": "x"}}, "unknown key vumi:database:pasword; did you mean password?"),
        ({"hooks": {"before_publsh": []}}, "unknown key vumi:hooks:before_publsh; did you mean before_publish?"),
        ({"nginx": {"enabeld": True}}, "unknown key vumi:nginx:enabeld; did you mean enabled?"),
        ({"sls": {"webap": False}}, "unknown key vumi:sls:webap; did you mean webapp?"),
        ({"environments": {"staging": {"prots": [8000]}}}, "unknown key vumi:environments:staging:prots; did you mean ports?"),
        ({"environments": {"staging": {"supervisor": {"log_backup": 3}}}},
         "unknown key vumi:environments:staging:supervisor:log_backup; did you mean log_backups?"),
        ({"environments": {"staging": {"deploy": ["staging"]}}},
         "vumi:environments:staging:deploy: set deploy at the top of pillar vumi, not per environment"),
        ({"environments": {"staging": "production"}}, "invalid vumi:environments:staging 'production': must be a mapping"),
        ({"environments": ["staging"]}, "invalid vumi:environments: must map environment names to their settings"),
        ({"qwertyuiop": 1}, "unknown key vumi:qwertyuiop (every key: docs/settings-reference.md)"),
        ({"apps": {"blog": {"repo_ur": "x"}}}, "unknown key vumi:apps:blog:repo_ur; did you mean repo_url?"),
        ({"apps": {"blog": {"environments": {"staging": {"prots": []}}}}},
         "unknown key vumi:apps:blog:environments:staging:prots; did you mean ports?"),
        ({"apps": {"blog": {"deploy": []}}}, "vumi:apps:blog:deploy: set deploy at the top of pillar vumi"),
        ({"apps": ["blog"]}, "invalid vumi:apps: must map app names to their settings"),
    ],
)  # fmt: skip
def test_an_unknown_key_is_named_where_it_is_with_the_closest_known_one(pillar, said):
    (problem,) = vumi_settings.schema_problems(pillar)
    assert problem.startswith(said), problem
    with pytest.raises(SaltInvocationError) as caught:
        vumi_settings.merge("staging", pillar, None, {})
    assert said.replace("vumi:", "pillar vumi:", 1) in str(caught.value)


def test_every_key_a_user_writes_is_known():
    pillar = {"deploy": ["staging"], "manage_user": True, "sls": {"webapp": False}, "nginx": {"listen": 80},
              "env": {"ANY_NAME": "1"}, "settings": {"ANY_SETTING": 1}, "database": {"password": "x"},
              "hooks": {"after_publish": ["true"]},
              "environments": {"staging": {"nginx": {"listen": 8080}, "sls": {"webapp": True}, "env": {"X": "1"}},
                               "production": None}}  # fmt: skip
    assert vumi_settings.schema_problems(pillar) == []
    assert vumi_settings.merge("staging", pillar, None, {})["environment"] == "staging"
    with pytest.raises(SaltInvocationError, match="unknown argument prots; did you mean ports"):
        vumi_settings.merge("staging", pillar, None, {"prots": [1]})


def test_an_apps_environment_takes_the_hosts_keys_and_its_apps_own_alone():
    pillar = {
        "base_dir": "/srv", "python": "/usr/bin/python3", "supervisor": {"conf_dir": "/etc/sv"},
        "repo_url": "https://git.example.org/hc.git", "env": {"HC_ONLY": "1"}, "hooks": {"before_publish": ["x"]},
        "database": {"password": "hc"},
        "apps": {"blog": {"repo_url": "https://git.example.org/blog.git", "env": {"B": "1"},
                          "environments": {"staging": {"ports": [9000], "env": {"S": "1"}}}}},
    }  # fmt: skip
    blog = vumi_settings.merge("blog:staging", pillar, None, {})
    assert (blog["app"], blog["environment"], blog["branch"]) == ("blog", "staging", "staging")
    assert blog["base_dir"] == "/srv" and blog["python"] == "/usr/bin/python3"
    assert blog["supervisor"]["conf_dir"] == "/etc/sv"
    assert blog["repo_url"] == "https://git.example.org/blog.git" and blog["ports"] == [9000]
    assert blog["env"] == {"B": "1", "S": "1"}  # the app's, then its environment's; none of hc's
    assert blog["hooks"]["before_publish"] == [] and blog["database"] is None
    hc = vumi_settings.merge("staging", pillar, None, {})
    assert hc["env"] == {"HC_ONLY": "1"} and hc["app"] == "vumi"
    with pytest.raises(SaltInvocationError, match=r"unknown app blgo \(pillar vumi:apps:blgo\); did you mean blog\?"):
        vumi_settings.merge("blgo:staging", pillar, None, {})
    with pytest.raises(SaltInvocationError, match="invalid app 'my app'"):
        vumi_settings.merge("my app:staging", pillar, None, {})


def test_processes_and_cron_merge_by_name_and_take_the_environments_defaults():
    pillar = {
        "stop_signal": "INT",
        "processes": {"worker": "celery -A proj worker", "sendalerts": {"command": "./manage.py sendalerts"}},
        "cron": {"clearsessions": {"schedule": "0  3 * * *", "command": "./manage.py clearsessions"}},
        "environments": {"staging": {"processes": {"worker": {"command": "{venv}/bin/celery worker", "numprocs": 2,
                                                              "stop_timeout": 60}, "sendalerts": None}}},
    }  # fmt: skip
    cfg = vumi_settings.merge("staging", pillar, None, {})
    assert cfg["processes"] == {"worker": {"command": "{venv}/bin/celery worker", "numprocs": 2,
                                           "stop_signal": "SIGINT", "stop_timeout": 60.0}}  # fmt: skip
    assert cfg["cron"] == {"clearsessions": {"schedule": "0 3 * * *", "command": "./manage.py clearsessions"}}
    assert vumi_settings.merge("production", pillar, None, {})["processes"]["sendalerts"]["numprocs"] == 1


@pytest.mark.parametrize(
    "pillar, message",
    [
        ({"processes": {"celery worker": "x"}}, "invalid process name 'celery worker'"),
        ({"processes": {"a/b": "x"}}, "invalid process name 'a/b'"),
        ({"processes": {"8001": "x"}}, "invalid process name '8001'.*a name of digits is a port's program"),
        ({"processes": {"w": {"command": "x", "numprocs": 0}}}, r"invalid processes:w:numprocs 0: .*from 1 to 64"),
        ({"processes": {"w": {"command": "x", "numprocs": -1}}}, "invalid processes:w:numprocs -1"),
        ({"processes": {"w": {"command": "x", "numprocs": "2"}}}, "invalid processes:w:numprocs '2'"),
        ({"processes": {"w": {"command": "x", "numprocs": 1000}}}, "invalid processes:w:numprocs 1000"),
        (
            {"processes": {"w": {"command": "x", "numproc": 2}}},
            "unknown key processes:w:numproc; did you mean numprocs",
        ),
        ({"processes": {"w": {"numprocs": 2}}}, "processes:w has no command"),
        ({"processes": {"w": "{venv}/bin/celery -A {proj} worker"}}, r"\{proj\} is not a field"),
        ({"processes": {"w": "{vnv}/bin/celery"}}, r"\{vnv\} is not a field; did you mean \{venv\}"),
        ({"processes": {"w": "serve {port}"}}, r"\{port\} is not a field"),
        ({"processes": {"w": {"command": "x", "stop_signal": "SIGCONT"}}}, "it does not stop a process"),
        ({"processes": ["worker"]}, "invalid processes"),
        (
            {"cron": {"c": {"schedule": "0 3 * *", "command": "x"}}},
            r"invalid cron:c:schedule '0 3 \* \*': must be five",
        ),
        ({"cron": {"c": {"schedule": "@daily", "command": "x"}}}, "invalid cron:c:schedule '@daily'"),
        ({"cron": {"c": {"schedule": "0 3 * * * *", "command": "x"}}}, "must be five fields"),
        ({"cron": {"c": {"schedule": "0 3 * * ;rm", "command": "x"}}}, "must be five fields"),
        ({"cron": {"c": {"schedule": "0 3 * * *"}}}, "cron:c has no command"),
        ({"cron": {"c": {"schedule": "0 3 * * *", "command": "x", "user": "root"}}}, "unknown key cron:c:user"),
        ({"webapp_command": "gunicorn --bind {host}:{prot}"}, r"\{prot\} is not a field; did you mean \{port\}"),
    ],
)
def test_bad_processes_and_cron_jobs_are_named(pillar, message):
    with pytest.raises(SaltInvocationError, match=message):
        vumi_settings.merge("staging", pillar, None, {})
