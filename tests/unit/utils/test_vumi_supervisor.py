"""``salt/_utils/vumi_supervisor.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_supervisor


def test_a_program_file_value_holds_no_control_character():
    for bad in ("gunicorn --name a\x0bb", "a\nb", "a\x1bb", "a\x00b"):
        with pytest.raises(SaltInvocationError, match="control character"):
            vumi_supervisor._value(bad, "webapp_command")  # pylint: disable=protected-access
    assert vumi_supervisor._value("a\tb 100%", "x") == "a\tb 100%%"  # pylint: disable=protected-access


def test_the_socket_is_read_from_supervisords_config(tmp_path):
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[unix_http_server]\nfile=%(here)s/run/supervisor.sock ; a comment\n")
    assert vumi_supervisor.socket_path(str(conf)) == f"{tmp_path}/run/supervisor.sock"
    conf.write_text("[supervisord]\n")
    with pytest.raises(CommandExecutionError, match=r"has no \[unix_http_server\] file="):
        vumi_supervisor.socket_path(str(conf))
    with pytest.raises(CommandExecutionError, match="cannot read supervisord's config"):
        vumi_supervisor.socket_path(str(tmp_path / "missing.conf"))


def test_a_supervisord_that_is_not_running_is_named(cfg, tmp_path):
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[unix_http_server]\nfile={tmp_path}/gone.sock\n")
    sup = vumi_supervisor.Supervisor(dict(cfg, supervisor=dict(cfg["supervisor"], conf_file=str(conf))), timeout=2)
    with pytest.raises(
        CommandExecutionError, match=rf"supervisord is not reachable on {tmp_path}/gone.sock .*is it running"
    ):
        sup.ping()


def test_the_program_file_runs_each_port_through_current(cfg, paths):
    cfg = dict(cfg, ports=[8000, 8001], env={"GREETING": 'say "100%"'}, stop_timeout=2.6)
    text = vumi_supervisor.render_programs(cfg, paths, lambda port: f"gunicorn --bind 127.0.0.1:{port}")
    # each program its own group: a changed file is applied one program at a time
    assert "[group:" not in text and list(vumi_supervisor.sections(text)) == ["vumi-staging-8000", "vumi-staging-8001"]
    assert "command=/bin/sh -c 'exec gunicorn --bind 127.0.0.1:8001'" in text
    assert f"directory={paths.current_code()}" in text
    assert "GREETING='say \"100%%\"'" in text and 'VUMI_PORT="8000"' in text
    assert "stopsignal=TERM\nstopwaitsecs=3\nstopasgroup=true\nkillasgroup=true" in text
    with pytest.raises(SaltInvocationError, match="env X: a value with both"):
        vumi_supervisor.render_programs(dict(cfg, env={"X": "'\""}), paths, str)


def test_processes_and_ports_started_beyond_pillar_are_programs_too(cfg, paths):
    cfg = dict(cfg, ports=[8000], processes={
        "worker": {"command": "celery worker", "numprocs": 2, "stop_signal": "SIGINT", "stop_timeout": 60.0},
        "beat": {"command": "celery beat", "numprocs": 1, "stop_signal": "SIGTERM", "stop_timeout": 10.0},
    })  # fmt: skip
    text = vumi_supervisor.render_programs(cfg, paths, lambda port: f"serve {port}", lambda name: f"run {name}", [8005])
    found = vumi_supervisor.sections(text)
    assert list(found) == ["vumi-staging-8000", "vumi-staging-8005", "vumi-staging-worker", "vumi-staging-beat"]
    worker = found["vumi-staging-worker"]
    assert worker["command"] == "/bin/sh -c 'exec run worker'" and worker["numprocs"] == "2"
    assert worker["process_name"] == "%(program_name)s-%(process_num)d"
    assert worker["stopsignal"] == "INT" and worker["stopwaitsecs"] == "60"
    assert worker["stdout_logfile"].endswith("/process.worker.%(process_num)d.log")
    assert 'VUMI_PROCESS="worker"' in worker["environment"] and "VUMI_PORT" not in worker["environment"]
    assert "numprocs" not in found["vumi-staging-beat"]
    assert vumi_supervisor.process_names(cfg, "worker") == [
        "vumi-staging-worker:vumi-staging-worker-0",
        "vumi-staging-worker:vumi-staging-worker-1",
    ]
    assert vumi_supervisor.process_names(cfg, "beat") == ["vumi-staging-beat:vumi-staging-beat"]
    assert f"{vumi_supervisor.EXTRA_MARK} 8005\n" in text
