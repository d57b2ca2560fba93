"""
The two ways the bundle reaches Salt, each in a fresh virtualenv holding only Salt
(the same Salt as .venv's, installed offline from uv's cache, which scripts/bootstrap
filled):

- ``pip install <checkout>``: Salt's loader finds the module, states, runner, grain
  and wrapper through the ``salt.loader`` entry point; the minion config names no
  ``module_dirs`` and nothing is synced. (Installed with ``--no-deps``: its other
  dependencies, uv and supervisor, are for deploying, not for loading.)
- no package at all: a real salt-master serving this checkout's ``salt/`` from
  ``file_roots``, two real minions, and ``saltutil.sync_all``.
"""

import contextlib
import getpass
import importlib.metadata
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import vumi_version
from support.net import free_ports

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]
UV = pathlib.Path(sys.executable).parent / "uv"
SALT = importlib.metadata.version("salt")


def _run(args, timeout=120, exit_code=0, **kwargs):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False,
                          **kwargs)  # fmt: skip
    assert proc.returncode == exit_code, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _venv(path, *packages):
    """A new virtualenv at ``path`` with Salt (and ``packages``, without their dependencies)."""
    _run([UV, "venv", "-q", "--python", sys._base_executable, path])  # pylint: disable=protected-access
    _run([UV, "pip", "install", "-q", "--offline", "--python", path / "bin" / "python", f"salt=={SALT}"])
    if packages:
        _run([UV, "pip", "install", "-q", "--offline", "--no-deps", "--python", path / "bin" / "python", *packages])
    return path / "bin"


def _json(bin_dir, tool, conf, *args, timeout=120, exit_code=0):
    static = ["--static"] if tool == "salt" else []  # every minion's return in one JSON document
    out = _run([bin_dir / tool, "-c", conf, "--out=json", *static, *args], timeout=timeout, exit_code=exit_code)
    # salt-run says "No minions matched the target..." on stdout before the return
    return json.loads(out[min((i for i in (out.find("{"), out.find("[")) if i >= 0), default=0) :])


def _upstream(path):
    """A real git repository with a ``staging`` branch, as an app's upstream."""
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    path.mkdir()
    _run(["git", "init", "-q", "-b", "staging", path])
    (path / "README").write_text("an app\n")
    (path / "requirements.txt").write_text("# nothing to install\n")  # what vumi.check looks for
    _run([*git, "add", "README", "requirements.txt"])
    _run([*git, "commit", "-q", "-m", "first"])
    return _run([*git, "rev-parse", "HEAD"]).strip()


def _pillar(folder, base_dir, repo_url):
    folder.mkdir(parents=True)
    (folder / "top.sls").write_text("base:\n  '*':\n    - vumi\n")
    vumi = {"base_dir": str(base_dir), "repo_url": str(repo_url), "ports": [], "supervisor": {"manage_service": False}}
    (folder / "vumi.sls").write_text(json.dumps({"vumi": vumi}))
    return folder


def _common(root):
    """Where a daemon keeps its state: under ``root`` (its sockets too: a short path, for AF_UNIX's limit)."""
    return {"root_dir": str(root), "user": getpass.getuser(), "log_file": str(root / "log"),
            "pki_dir": str(root / "pki"), "cachedir": str(root / "cache"), "sock_dir": str(root / "sock")}  # fmt: skip


@pytest.fixture(scope="module")
def with_bundle(tmp_path_factory):
    """A virtualenv with Salt and this checkout installed as a package (not editable)."""
    return _venv(tmp_path_factory.mktemp("installed") / "venv", REPO)


@pytest.fixture(scope="module")
def salt_only(tmp_path_factory):
    """A virtualenv with Salt and nothing of the bundle."""
    return _venv(tmp_path_factory.mktemp("salt-only") / "venv")


def test_pip_install_is_all_a_masterless_minion_needs(with_bundle, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    pillar = _pillar(tmp_path / "pillar", tmp_path / "srv", "https://git.example.invalid/app.git")
    # no module_dirs, states_dirs or extension_modules: the entry point is how Salt finds it
    (conf / "minion").write_text(json.dumps(dict(_common(tmp_path / "root"), file_client="local",
                                                 pillar_roots={"base": [str(pillar)]})))  # fmt: skip
    call = lambda *args: _json(with_bundle, "salt-call", conf, "--local", *args)["local"]  # noqa: E731
    assert "vumi" in call("sys.list_modules")
    assert "vumi" in call("sys.list_state_modules")
    settings = call("vumi.settings", "staging")
    assert settings["branch"] == "staging" and settings["base_dir"] == str(tmp_path / "srv")
    found = call("vumi.version")
    site = next((with_bundle.parent / "lib").glob("python3*/site-packages"))
    assert found["version"] == vumi_version.VERSION
    assert found["module"] == str(site / "saltext" / "vumi" / "_modules" / "vumi.py")
    # the formula is in the package: file_roots pointed there serves vumi/init.sls
    assert found["formula"] == str(site / "saltext" / "vumi")
    (conf / "minion").write_text(json.dumps(dict(json.loads((conf / "minion").read_text()),
                                                 file_roots={"base": [found["formula"]]})))  # fmt: skip
    shown = call("state.show_sls", "vumi", 'pillar={"branch": "staging"}')
    assert shown["vumi-staging-deployed"]["__sls__"] == "vumi", shown


class Daemons:
    """A salt-master and minions started here (each in its own session), stopped at the end."""

    def __init__(self, bin_dir, top):
        self.bin, self.top, self.procs = bin_dir, top, []
        self.publish, self.ret = free_ports(2)
        self.master = top / "master"
        self.master.mkdir()
        self.roots = pathlib.Path(tempfile.mkdtemp(prefix="vumi-salt-"))

    def start_master(self, **opts):
        config = dict(_common(self.roots / "master"), interface="127.0.0.1", publish_port=self.publish,
                      ret_port=self.ret, auto_accept=True, **opts)  # fmt: skip
        (self.master / "master").write_text(json.dumps(config))
        self._start("salt-master", self.master)

    def start_minion(self, minion_id):
        conf = self.top / minion_id
        conf.mkdir()
        config = dict(_common(self.roots / minion_id), id=minion_id, master="127.0.0.1",
                      master_port=self.ret, publish_port=self.publish)  # fmt: skip
        (conf / "minion").write_text(json.dumps(config))
        self._start("salt-minion", conf)

    def _start(self, daemon, conf):
        log = open(conf / "out", "wb")  # pylint: disable=consider-using-with
        self.procs.append(subprocess.Popen([str(self.bin / daemon), "-c", str(conf), "-l", "warning"],
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        log.close()

    def salt(self, *args, timeout=120):
        return _json(self.bin, "salt", self.master, *args, timeout=timeout)

    def run(self, *args, exit_code=0):
        return _json(self.bin, "salt-run", self.master, *args, exit_code=exit_code)

    def wait_for(self, ids, within=120):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError, ValueError):
                if set(self.salt("-L", ",".join(ids), "test.ping", "-t", "5")) >= set(ids):
                    return
            time.sleep(1)
        raise AssertionError(f"the minions {ids} did not answer the master within {within}s")

    def stop(self):
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(self.roots, ignore_errors=True)


@pytest.fixture
def daemons(tmp_path):
    started = []

    def make(bin_dir):
        started.append(Daemons(bin_dir, tmp_path))
        return started[-1]

    yield make
    for each in started:
        each.stop()


def test_a_master_syncs_the_bundle_to_minions_that_have_no_package(salt_only, daemons, tmp_path):
    sha = _upstream(tmp_path / "upstream")
    pillar = _pillar(tmp_path / "pillar", tmp_path / "srv", tmp_path / "upstream")
    fleet = daemons(salt_only)
    fleet.start_master(file_roots={"base": [str(REPO / "salt")]}, pillar_roots={"base": [str(pillar)]})
    ids = ["web-1", "web-2"]
    for minion_id in ids:
        fleet.start_minion(minion_id)
    fleet.wait_for(ids)
    assert all("vumi" not in mods for mods in fleet.salt("*", "sys.list_modules").values())  # nothing yet
    synced = fleet.salt("*", "saltutil.sync_all")
    assert all("modules.vumi" in ret["modules"] and "utils.vumi_settings" in ret["utils"] for ret in synced.values())
    versions = fleet.salt("*", "vumi.version")
    assert {v["version"] for v in versions.values()} == {vumi_version.VERSION}
    assert all(v["formula"] is None for v in versions.values())  # the master serves it
    assert {s["base_dir"] for s in fleet.salt("*", "vumi.settings", "staging").values()} == {str(tmp_path / "srv")}
    # the runner on the master, synced there the same way
    synced = fleet.run("saltutil.sync_all")
    assert "runners.vumi" in synced["runners"] and "utils.vumi_version" in synced["utils"], synced
    planned = fleet.run("vumi.deploy", "staging", "web-*", "test=True")
    assert planned["result"] is None and planned["revision"] == sha, planned
    assert planned["version"] == vumi_version.VERSION and planned["hosts"] == ids


def test_an_installed_runner_loads_without_a_sync(with_bundle, daemons):
    master = daemons(with_bundle)
    master.start_master()
    deadline = time.monotonic() + 60
    while not (master.roots / "master" / "sock" / "master_event_pub.ipc").exists():
        assert time.monotonic() < deadline, "the salt-master did not start"
        time.sleep(0.5)
    assert master.run("vumi.status") == []  # no minion yet: no rows, and no "not available"
    refused = master.run("vumi.deploy", "staging", "nomatch*", exit_code=1)  # an empty target is a failure
    assert refused["result"] is False and "no minion matches 'nomatch*'" in refused["comment"]
