"""
For apps nobody here wrote: the defaults fit them, hooks run in the
new release before the switch, pillar ``env`` reaches every process of a
release (and Salt's own environment does not), declared packages survive
every deploy.

Real git repositories, real virtualenvs, real processes; the apps are small
files committed by the tests into their own copy of the sample repository.
"""

import json
import os
import pwd

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import make_repo as sample  # tests/conftest.py puts sample/ on sys.path
from support.helpers import current_target, env_root, http_get, release_dirs

ENV = "staging"

#: a webapp that answers every GET with its own environment, as JSON
ENV_APP = """\
import http.server, json, os, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(dict(os.environ)).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
ENV_APP_COMMAND = "{venv}/bin/python envapp.py {port}"


@pytest.fixture
def envapp(repo):
    sample.commit_file(repo, ENV, "envapp.py", ENV_APP, "an app that shows its environment")
    return repo


@pytest.fixture
def salt_env(monkeypatch, tmp_path):
    """What Salt (root, here the test) has in its environment and must not hand on."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "root-only-secret")
    monkeypatch.setenv("HOME", str(tmp_path / "salts-home"))
    return {"AWS_SECRET_ACCESS_KEY", "SALT_SECRET"}


def test_env_reaches_the_webapp_execute_and_hooks_and_salts_environment_does_not(
    vumi, envapp, base_dir, free_port, webapps, salt_env, deploy_user
):
    owner = deploy_user or pwd.getpwuid(os.geteuid())  # whose the environment is
    port = free_port()
    webapps.append((ENV, port))
    env = {"DATABASE_URL": "postgres://app@127.0.0.1:5432/app", "WORKERS": 3}
    hooks = {
        "before_publish": ['printf "%s|%s|%s" "$DATABASE_URL" "$HOME" "${AWS_SECRET_ACCESS_KEY-unset}" > tmp/hook.out']
    }
    deployed = vumi.deploy(ENV, env=env, hooks=hooks, health_check=True, webapp_command=ENV_APP_COMMAND)
    root = env_root(base_dir)
    # the hook: in the new release, before the switch, with env and the user's own HOME
    assert (
        root / "shared" / "tmp" / "hook.out"
    ).read_text() == f"postgres://app@127.0.0.1:5432/app|{owner.pw_dir}|unset"
    assert "hooks" in deployed["timings"] and "before_publish[0]" in deployed["timings"]

    vumi.start_webapp(ENV, port, ports=[port], env=env, webapp_command=ENV_APP_COMMAND)
    status, seen = http_get(port)
    assert status == 200
    assert seen["DATABASE_URL"] == env["DATABASE_URL"] and seen["WORKERS"] == "3"
    assert seen["HOME"] == owner.pw_dir and seen["USER"] == owner.pw_name
    assert seen["PATH"].split(":")[0].endswith("/ve/bin") and seen["VUMI_PORT"] == str(port)
    assert not salt_env & set(seen), "Salt's own environment reached the webapp"
    assert "DJANGO_SETTINGS_MODULE" in seen  # the sample app has environments/staging.py

    ran = vumi.execute(ENV, 'echo "$DATABASE_URL $HOME ${AWS_SECRET_ACCESS_KEY-unset}"', env=env)
    assert ran["stdout"] == f"{env['DATABASE_URL']} {owner.pw_dir} unset"


def test_django_settings_module_only_when_the_release_has_it(vumi, envapp, repo, free_port, webapps):
    port = free_port()
    webapps.append((ENV, port))
    # a startproject site has no environments/ package: its own default must stand
    sample.git(repo, "checkout", "--quiet", ENV)
    sample.git(repo, "rm", "--quiet", "-r", "environments")
    sample.git(repo, "commit", "--quiet", "-m", "no environments package")
    vumi.deploy(ENV, webapp_command=ENV_APP_COMMAND)
    vumi.start_webapp(ENV, port, ports=[port], webapp_command=ENV_APP_COMMAND)
    assert "DJANGO_SETTINGS_MODULE" not in http_get(port)[1]
    assert "DJANGO_SETTINGS_MODULE" not in vumi.execute(ENV, "env")["stdout"]
    # pillar settings write the module: then it is set
    vumi.stop_webapp(ENV, port, ports=[port])
    vumi.deploy(ENV, webapp_command=ENV_APP_COMMAND, settings={"GREETING": "from pillar"})
    vumi.start_webapp(ENV, port, ports=[port], webapp_command=ENV_APP_COMMAND)
    assert http_get(port)[1]["DJANGO_SETTINGS_MODULE"] == "environments.staging"


def test_a_failing_before_publish_hook_fails_the_deploy_and_leaves_current_serving(
    vumi, repo, base_dir, free_port, webapps
):
    port = free_port()
    webapps.append((ENV, port))
    good = vumi.deploy(ENV)
    vumi.start_webapp(ENV, port, ports=[port])
    before = http_get(port)[1]
    sample.commit_file(repo, ENV, "NEWS", "a migration that fails\n", "bad migration")
    hooks = {"before_publish": ["echo migrating", {"run": "echo 'relation does not exist' >&2; exit 4", "once": True}]}
    with pytest.raises(CommandExecutionError) as failed:
        vumi.deploy(ENV, hooks=hooks)
    message = str(failed.value)
    assert "failed at stage 'hooks'" in message and "exit 4" in message and "relation does not exist" in message
    assert current_target(base_dir) == f"releases/{good['release']}"
    assert release_dirs(base_dir) == [good["release"]]  # the new one went to failed/
    assert http_get(port)[1]["ppid"] == before["ppid"]
    history = [json.loads(line) for line in (env_root(base_dir) / "history.log").read_text().splitlines()]
    assert history[-1]["action"] == "failed" and history[-1]["stage"] == "hooks"
    assert "relation does not exist" in history[-1]["reason"] and "exit 4" in history[-1]["reason"]


def test_once_hooks_run_on_one_host_and_after_publish_hooks_after_the_switch(vumi, base_dir):
    out = env_root(base_dir) / "shared" / "tmp"
    hooks = {
        "before_publish": [{"run": "echo once >> tmp/once.log", "once": True}, "echo every >> tmp/every.log"],
        "after_publish": ["readlink ../../../current > tmp/after.log"],
    }
    first = vumi.deploy(ENV, hooks=hooks)  # a host on its own runs them all
    other = vumi.deploy(ENV, hooks=hooks, run_once=False)  # a fleet's other hosts skip the once ones
    assert (out / "once.log").read_text() == "once\n"
    assert (out / "every.log").read_text() == "every\nevery\n"
    assert other["hooks_skipped"] == ["before_publish[0]"] and first["hooks_skipped"] == []
    assert (out / "after.log").read_text().strip() == f"releases/{other['release']}"  # current already switched


def test_declared_pip_packages_survive_a_requirements_change(vumi, repo, base_dir):
    """The seed's `vumi.execute staging "pip install psycopg2-binary"`, declared instead."""
    extra = sample.build_wheel(*_package(base_dir.parent / "driver"), out_dir=base_dir.parent / "wheels-driver")
    find = f"--find-links {extra.parent}"
    sample.commit_file(repo, ENV, "config/requirements.pip",
                       f"--no-index\n--find-links wheels\n{find}\nvumi-sample-lib==1.0\n", "find the driver")  # fmt: skip
    first = vumi.deploy(ENV, pip_packages=["fakedriver==1.0"])
    check = "python -c 'import fakedriver; print(fakedriver.VERSION)'"
    assert vumi.execute(ENV, check)["stdout"] == "1.0"
    sample.commit_file(repo, ENV, "config/requirements.pip",
                       f"--no-index\n--find-links wheels\n{find}\nvumi-sample-lib==1.0\n# changed\n", "change")  # fmt: skip
    second = vumi.deploy(ENV, pip_packages=["fakedriver==1.0"])
    assert second["virtualenv_built"] and second["requirements_hash"] != first["requirements_hash"]
    assert vumi.execute(ENV, check)["stdout"] == "1.0"  # still there: part of what the virtualenv is built from


def _package(root):
    pkg = root / "fakedriver"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('VERSION = "1.0"\n')
    return pkg, "fakedriver", "1.0"


@pytest.mark.parametrize(
    "setting, value, named",
    [
        ("hooks", {"before_publish": [42]}, "hooks:before_publish entry 42"),
        ("hooks", {"before_publish": [{"run": "true", "once": "yes"}]}, "hooks:before_publish entry"),
        ("hooks", {"before_publish": "./manage.py migrate"}, "hooks:before_publish"),
        ("hooks", {"before_deploy": ["true"]}, "before_deploy"),
        ("env", {"DATABASE-URL": "x"}, "env key 'DATABASE-URL'"),
        ("env", {"DEBUG": True}, "env value for DEBUG"),
        ("env", {"OPTIONS": {"a": 1}}, "env value for OPTIONS"),
        ("env", "DATABASE_URL=x", "invalid env 'DATABASE_URL=x'"),
        ("pip_packages", "psycopg2-binary", "invalid pip_packages 'psycopg2-binary'"),
        ("pip_packages", ["-r /root/secret"], "pip_packages entry '-r /root/secret'"),
        ("pip_packages", [3], "pip_packages entry 3"),
        ("health_path", "health", "invalid health_path 'health'"),
    ],
)
def test_bad_input_is_refused_before_anything_is_made(vumi, base_dir, setting, value, named):
    with pytest.raises(SaltInvocationError) as refused:
        vumi.deploy(ENV, **{setting: value})
    assert named in str(refused.value), refused.value
    assert list(base_dir.iterdir()) == []


def test_rollback_restarts_the_webapps_onto_the_old_release_and_holds(
    loaders, vumi, repo, base_dir, free_port, webapps
):
    ports = [free_port(), free_port()]
    webapps.extend((ENV, p) for p in ports)
    good = vumi.deploy(ENV, ports=ports)
    vumi.start_webapp_cluster(ENV, *ports, ports=ports)
    sample.commit_file(repo, ENV, "NEWS", "a bad release\n", "bad")
    bad = vumi.deploy(ENV, ports=ports)
    vumi.restart_webapp_cluster(ENV, *ports, ports=ports)
    assert {http_get(p)[1]["release"] for p in ports} == {bad["release"]}

    back = vumi.rollback(ENV, ports=ports)
    assert back["release"] == good["release"] and back["restarted"] == ports
    assert {http_get(p)[1]["release"] for p in ports} == {good["release"]}  # serving the old code again
    current = vumi.current(ENV, ports=ports)
    assert current["rolled_back_from"] == {"release": bad["release"], "revision": bad["revision"], "pinned": None}

    # the state does not bring the bad revision back ...
    ret = loaders.states.vumi.deployed(ENV, ports=ports)
    assert ret["result"] is True and ret["changes"] == {}, ret
    assert "rolled back from" in ret["comment"], ret
    assert current_target(base_dir) == f"releases/{good['release']}"
    # ... until the branch moves on
    sample.commit_file(repo, ENV, "NEWS", "the fix\n", "fix")
    ret = loaders.states.vumi.deployed(ENV, ports=ports, health_check=False)
    assert ret["result"] is True and ret["changes"]["revision"]["new"] == sample.git(repo, "rev-parse", ENV), ret
    assert vumi.current(ENV)["rolled_back_from"] is None

    # restart=False only switches
    pids = {p: http_get(p)[1]["ppid"] for p in ports}
    assert vumi.rollback(ENV, restart=False, ports=ports)["restarted"] == []
    assert {p: http_get(p)[1]["ppid"] for p in ports} == pids
