"""
The helpers in ``salt/_utils``, each on its own, imported as the execution module
imports them (plain modules, installed by ``pip install -e .``). Real files, folders and
processes in ``tmp_path``; Salt's loader is not involved: nothing tested here calls a
Salt function (what does is tested through the loader, in tests/functional).
"""

import getpass
import http.server
import os
import pathlib
import threading
import types

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_environment
import vumi_files
import vumi_health
import vumi_history
import vumi_hooks
import vumi_layout
import vumi_lock
import vumi_manifest
import vumi_naming
import vumi_paths
import vumi_releases
import vumi_settings
import vumi_settings_file
import vumi_supervisor
import vumi_webapp


@pytest.fixture
def cfg(tmp_path):
    return vumi_settings.merge("staging", {"base_dir": str(tmp_path / "srv"), "user": getpass.getuser()}, None, {})


@pytest.fixture
def paths(cfg):
    return vumi_paths.Paths(cfg)


# vumi_settings -------------------------------------------------------------


def test_settings_precedence_and_mappings_merged_key_by_key():
    pillar = {"env": {"A": "global", "B": "global"}, "ports": [1],
              "environments": {"staging": {"env": {"B": "staging"}, "ports": [2]}}}  # fmt: skip
    cfg = vumi_settings.merge("staging", pillar, {"ports": [0]}, {"env": {"C": 3}})
    assert cfg["env"] == {"A": "global", "B": "staging", "C": "3"} and cfg["ports"] == [2]
    assert cfg["environment"] == "staging" and cfg["branch"] == "staging"
    assert vumi_settings.masked(cfg)["env"] == {"A": "**********", "B": "**********", "C": "**********"}


def test_hooks_are_normalised_and_bad_ones_named():
    assert vumi_settings.hooks({"before_publish": ["a", {"run": "b", "once": True, "timeout": 5}]}, 60) == {
        "before_publish": [{"run": "a", "once": False, "timeout": 60.0}, {"run": "b", "once": True, "timeout": 5.0}],
        "after_publish": []}  # fmt: skip
    with pytest.raises(SaltInvocationError, match="hooks:after_publish entry"):
        vumi_settings.hooks({"after_publish": [{"run": "x", "when": "always"}]})
    for bad in (0, -1, "10", True, float("nan"), float("inf")):
        with pytest.raises(SaltInvocationError, match="invalid hooks:before_publish timeout"):
            vumi_settings.hooks({"before_publish": [{"run": "x", "timeout": bad}]})
    with pytest.raises(SaltInvocationError, match="invalid hook_timeout"):
        vumi_settings.merge("staging", {"hook_timeout": 0}, None, {})


# vumi_paths ----------------------------------------------------------------


def test_a_program_file_value_holds_no_control_character():
    for bad in ("gunicorn --name a\x0bb", "a\nb", "a\x1bb", "a\x00b"):
        with pytest.raises(SaltInvocationError, match="control character"):
            vumi_supervisor._value(bad, "webapp_command")  # pylint: disable=protected-access
    assert vumi_supervisor._value("a\tb 100%", "x") == "a\tb 100%%"  # pylint: disable=protected-access


def test_paths_are_computed_in_one_place(paths, tmp_path):
    assert paths.root == str(tmp_path / "srv" / "vumi" / "staging")
    assert paths.tree()[0] == paths.root and paths.uv_cache in paths.tree()
    assert paths.code("20261201_120000").endswith("releases/20261201_120000/vumi")
    with pytest.raises(SaltInvocationError, match="invalid release"):
        paths.release("../../etc")


# vumi_files ----------------------------------------------------------------


def test_symlink_atomic_replaces_by_rename_and_write_atomic_never_follows(tmp_path):
    vumi_files.symlink_atomic("a", str(tmp_path / "link"))
    inode = os.lstat(tmp_path / "link").st_ino
    vumi_files.symlink_atomic("b", str(tmp_path / "link"))
    assert os.readlink(tmp_path / "link") == "b" and os.lstat(tmp_path / "link").st_ino != inode
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    os.symlink(victim, tmp_path / f"file.tmp-{os.getpid()}")  # planted at the temporary name
    with pytest.raises(OSError):
        vumi_files.write_atomic(str(tmp_path / "file"), "new")
    assert victim.read_text() == "untouched"


# vumi_history --------------------------------------------------------------


def test_history_lines_and_a_busy_lock_names_its_holder(paths):
    os.makedirs(paths.root)
    vumi_history.record(paths, "deploy", release="r1")
    vumi_history.record(paths, "rollback", release="r0")
    assert [e["action"] for e in vumi_history.read_history(paths)] == ["deploy", "rollback"]
    with vumi_lock.flock(paths.lock, 0, RuntimeError):
        with pytest.raises(RuntimeError, match=str(os.getpid())):
            with vumi_lock.flock(paths.lock, 0.1, RuntimeError):
                pass


# vumi_layout ---------------------------------------------------------------


def test_the_tree_is_predicted_then_made_and_a_planted_link_refused(cfg, paths, tmp_path):
    assert vumi_layout.ensure_tree(cfg, paths, test=True)["created"] == paths.tree()
    assert not os.path.exists(paths.root)
    assert vumi_layout.ensure_tree(cfg, paths)["created"] == paths.tree()
    assert vumi_layout.ensure_tree(cfg, paths)["created"] == []
    os.rmdir(paths.pids)
    os.symlink(tmp_path, paths.pids)
    with pytest.raises(CommandExecutionError, match="is a symlink"):
        vumi_layout.ensure_tree(cfg, paths)


# vumi_releases -------------------------------------------------------------


def test_rollback_target_replays_the_history_as_a_stack(cfg, paths):
    vumi_layout.ensure_tree(cfg, paths)
    for name in ("20260101_000001", "20260101_000002", "20260101_000003"):
        os.makedirs(paths.release(name))
        vumi_manifest.write_manifest(paths, name, None, {"revision": (name.replace("_", "") * 3)[:40]})
        vumi_history.record(paths, "deploy", release=name)
    vumi_releases.publish(paths, "20260101_000003")
    assert vumi_releases.rollback_target(paths) == "20260101_000002"
    vumi_releases.publish(paths, "20260101_000002")
    vumi_history.record(paths, "rollback", release="20260101_000002", previous="20260101_000003",
                        rolled_back_from="20260101_000003")  # fmt: skip
    assert vumi_releases.rollback_target(paths) == "20260101_000001"  # further back, not forth
    assert vumi_releases.rolled_back_from(paths)["revision"] == "20260101_000003"
    assert vumi_naming.new_release_name(paths) > "20260101_000003"


# vumi_settings_file and vumi_environment -----------------------------------


def test_settings_file_text_and_the_settings_module_only_when_present(cfg, paths):
    assert vumi_settings_file.settings_file(cfg) == (None, None, None)
    with_settings = dict(cfg, settings={"B": [1], "A": "x"})
    relpath, digest, text = vumi_settings_file.settings_file(with_settings)
    assert relpath == "environments/staging.py" and text.splitlines()[1:] == ["A = 'x'", "B = [1]"]
    name = "20260101_000001"
    os.makedirs(paths.code(name))
    assert vumi_environment.release_settings_module(cfg, paths, name) is None
    assert vumi_environment.release_settings_module(with_settings, paths, name) == "environments.staging"
    os.makedirs(os.path.join(paths.code(name), "environments"))
    pathlib.Path(paths.code(name), "environments", "staging.py").write_text("")
    env = vumi_environment.for_release(dict(cfg, env={"X": "1"}), paths, name)
    assert env["DJANGO_SETTINGS_MODULE"] == "environments.staging" and env["X"] == "1"
    assert env["HOME"] == os.path.expanduser("~" + getpass.getuser()) and "SALT" not in "".join(env)


# vumi_hooks ----------------------------------------------------------------


def test_hooks_run_in_the_code_folder_and_a_failure_names_the_line(cfg, paths):
    name = "20260101_000001"
    os.makedirs(paths.code(name))
    d = types.SimpleNamespace(
        salt={}, cfg=dict(cfg, hooks=vumi_settings.hooks({"before_publish": [
            "pwd > out", {"run": "touch once", "once": True}, "echo boom >&2; exit 2"]})),
        paths=paths, release=name, runas=None, run_once=False, hooks_skipped=[], timings={}, events=False,
    )  # fmt: skip
    with pytest.raises(
        CommandExecutionError, match=r"before_publish hook 'echo boom >&2; exit 2' failed \(exit 2\): boom"
    ):
        vumi_hooks.before_publish(d)
    assert pathlib.Path(paths.code(name), "out").read_text().strip() == paths.code(name)
    assert d.hooks_skipped == ["before_publish[1]"] and not os.path.exists(os.path.join(paths.code(name), "once"))


# vumi_health ---------------------------------------------------------------


@pytest.mark.parametrize("status, path, healthy", [(404, None, True), (500, None, False), (404, "/health", False)])
def test_the_probe_rule(cfg, status, path, healthy):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    alive = types.SimpleNamespace(poll=lambda: None)
    try:
        ok, evidence = vumi_health.probe(dict(cfg, health_path=path, health_timeout=5), server.server_port, alive)
    finally:
        server.shutdown()
    assert ok is healthy and f"answered HTTP {status}" in evidence


# vumi_webapp ---------------------------------------------------------------


def test_the_webapp_command_is_filled_quoted_and_an_unknown_field_refused(cfg, paths):
    command = vumi_webapp.webapp_command(dict(cfg, webapp_command="run {port} {code}"), paths, "20260101_000001", 8000)
    assert command == f"run 8000 {paths.code('20260101_000001')}"
    with pytest.raises(SaltInvocationError, match="invalid webapp_command"):
        vumi_webapp.webapp_command(dict(cfg, webapp_command="run {nope}"), paths, "20260101_000001", 8000)
    # no field that names one release: a supervised program runs whatever current is
    with pytest.raises(SaltInvocationError, match=r"\{release\} is not a field"):
        vumi_webapp.webapp_command(dict(cfg, webapp_command="run {release}"), paths, "20260101_000001", 8000)
    supervised = vumi_webapp.webapp_command(
        dict(cfg, webapp_command="{venv}/bin/x {code}"), paths, "20260101_000001", 8000, supervised=True
    )
    assert supervised == f"{paths.current}/ve/bin/x {paths.current}/{cfg['app']}"


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
