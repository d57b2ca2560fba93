"""
``salt/_utils/vumi_check.py``: the pre-flight (Capistrano's ``deploy:check``) against a
real upstream repository with Salt's own ``cmd.run_all``. Each finding says what a
deploy would meet, and the check changes nothing.
"""

import os

import pytest

import vumi_check
import vumi_freeze
import vumi_git
import vumi_settings
from support.tree import snapshot


def test_a_new_environment_checks_clean_and_nothing_is_made(salt_functions, git_cfg, paths, upstream, tmp_path):
    before = snapshot(tmp_path)
    found = vumi_check.check(salt_functions, git_cfg, paths)
    assert found["ok"] is True, found
    # no cache yet: the requirements file is asked upstream, in the branch's commit
    assert set(found["checks"]) == {"shared", "lock", "repository", "requirements", "interpreter", "disk"}
    tip = found["checks"]["repository"]["detail"].rsplit(" ", 1)[-1]
    assert found["checks"]["requirements"]["detail"] == (
        f"found config/requirements.pip in {tip[:12]} (staging): installed as a requirements file"
    )
    missing = vumi_check.check(salt_functions, dict(git_cfg, requirements="requirements.txt"), paths)
    assert missing["ok"] is False
    assert missing["checks"]["requirements"] == {
        "ok": False,
        "detail": f"requirements.txt is not in {tip[:12]} (staging)",
    }
    assert found["checks"]["interpreter"]["detail"].endswith(f"runs as {git_cfg['user']}")
    assert " GiB free in " in found["checks"]["disk"]["detail"]
    assert found["checks"]["repository"]["detail"].startswith(f"{upstream} has branch staging at ")
    assert vumi_check.tree(git_cfg, paths) == {"ok": True, "detail": f"{paths.root} will be made under {tmp_path}"}
    assert snapshot(tmp_path) == before


def test_what_would_fail_the_deploy_is_named(salt_functions, git_cfg, deploy_of):
    d = deploy_of(dict(git_cfg, shared_files=[".env"], requirements="requirements.txt"))
    vumi_git.fetch(d)  # the cache holds the commit: the requirements file is looked for in it
    vumi_freeze.lock(d.cfg, d.paths, "incident", {"user": "alice"})
    found = vumi_check.check(salt_functions, d.cfg, d.paths)
    assert found["ok"] is False
    checks = found["checks"]
    assert checks["shared"] == {"ok": False, "detail": "shared files missing: .env"}
    assert checks["lock"]["ok"] is False and "locked by alice" in checks["lock"]["detail"]
    assert checks["requirements"] == {"ok": False, "detail": f"requirements.txt is not in {d.sha[:12]}"}
    unknown = vumi_check.check(salt_functions, dict(d.cfg, branch="stagin"), d.paths)
    assert unknown["checks"]["repository"]["ok"] is False
    assert "branch 'stagin' not found" in unknown["checks"]["repository"]["detail"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives a folder away")
def test_a_tree_of_another_owner_is_named(cfg, paths):
    os.makedirs(paths.root)
    assert vumi_check.tree(cfg, paths)["ok"] is True
    os.chown(paths.root, 1, 1)
    found = vumi_check.tree(cfg, paths)
    assert found["ok"] is False and f"{paths.root} belongs to uid 1, not to {cfg['user']}" in found["detail"]


def test_an_interpreter_the_user_cannot_run_and_a_supervisord_away_are_named(salt_functions, git_cfg, paths, tmp_path):
    found = vumi_check.check(salt_functions, dict(git_cfg, python=str(tmp_path / "no-python")), paths)
    assert found["ok"] is False and found["checks"]["interpreter"]["ok"] is False
    assert found["checks"]["interpreter"]["detail"] == (
        f"{tmp_path}/no-python does not exist for {git_cfg['user']}: set vumi:python to an interpreter it can run"
    )
    # one that runs but is no Python that makes virtualenvs
    found = vumi_check.check(salt_functions, dict(git_cfg, python="/bin/false"), paths)
    assert found["checks"]["interpreter"]["detail"].startswith(
        f"/bin/false cannot make virtualenvs for {git_cfg['user']}"
    )
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[unix_http_server]\nfile={tmp_path}/gone.sock\n")
    away = dict(git_cfg, ports=[8000], supervisor=dict(git_cfg["supervisor"], conf_file=str(conf)))
    assert vumi_check.supervisor(away)["ok"] is False
    assert f"supervisord is not reachable on {tmp_path}/gone.sock" in vumi_check.supervisor(away)["detail"]
    assert vumi_check.supervisor(dict(away, ports=[])) == {"ok": True, "detail": "no ports: supervisord is not needed"}


def test_nginx_is_asked_only_when_on_and_its_words_are_kept(salt_functions, tmp_path):
    assert vumi_check.nginx(salt_functions, {"enabled": False, "test_cmd": "false"}) is None
    assert vumi_check.nginx(salt_functions, {"enabled": True, "test_cmd": "true"}) == {
        "ok": True,
        "detail": "true passes",
    }
    said = tmp_path / "nginx"
    said.write_text("#!/bin/sh\necho 'nginx: [emerg] unknown directive \"lisen\"' >&2\nexit 1\n")
    said.chmod(0o755)
    assert vumi_check.nginx(salt_functions, {"enabled": True, "test_cmd": f"{said} -t"}) == {
        "ok": False,
        "detail": f'{said} -t fails: nginx: [emerg] unknown directive "lisen"',
    }


def test_cron_jobs_need_crontab_where_the_deploy_user_looks(cfg, tmp_path, monkeypatch):
    cfg = dict(cfg, cron={"nightly": {"schedule": "0 3 * * *", "command": "true"}})
    monkeypatch.setattr(vumi_settings, "PLAIN_PATH", str(tmp_path))  # a PATH with no crontab in it
    assert vumi_check.cron(cfg) == {
        "ok": False, "detail": "pillar cron has jobs, but crontab is not installed here (Debian: cron)"}  # fmt: skip
    (tmp_path / "crontab").write_text("#!/bin/sh\n")
    (tmp_path / "crontab").chmod(0o755)
    assert vumi_check.cron(cfg) == {"ok": True, "detail": f"{tmp_path}/crontab takes the 1 job(s) of pillar cron"}
