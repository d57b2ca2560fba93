"""
Virtualenvs keyed by content, against real parts: real git, real
virtualenvs built by pip offline from wheels committed to the app's repository,
real ``salt-call`` processes and a real webapp on loopback.

A release's ``ve`` is a symlink to ``shared/virtualenvs/<hash>``, where the hash
covers what the virtualenv is built from: the requirements text, the files it
includes and the local paths it installs from (``wheels/``), and the interpreter.
A virtualenv counts only once its marker ``.vumi-complete`` exists.

Speed: a virtualenv build takes seconds. One module-wide environment
(``lifecycle``) builds the two virtualenvs of the sample's requirements with and
without an extra package for real; tests about anything else than building start
from those made again in their environment (``seed``: uv from the session's warm cache,
not a copy, whose scripts would name the other virtualenv's python), which a deploy
reuses because their content hash is the same in every environment. The tests about building (a local package
changed, an interrupted build, ``reuse_virtualenvs: False``) build for real.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import types

import pytest

import make_repo as sample  # tests/conftest.py puts sample/ on sys.path
from support import failures, tree, users
from support.failures import rebuild_venv
from support.helpers import current_target, env_root, http_get, module_env

ENV = "staging"
MARKER = ".vumi-complete"
REQUIREMENTS = "config/requirements.pip"
EXTRA = "vumi-extra"  # the tiny package a requirements change adds


# --------------------------------------------------------------------------
# Helpers: changes to the app's repository, what a user looks at
# --------------------------------------------------------------------------


def write_package(parent, name, version_text):
    """A one-module package ``parent/name`` whose VERSION is ``version_text``."""
    pkg = pathlib.Path(parent) / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(f'"""Built by test_virtualenvs."""\n\nVERSION = {version_text!r}\n')
    return pkg


def add_extra_requirement(repo, workdir):
    """Commit a new wheel into ``wheels/`` and require it: a requirements change.

    The wheel is built deterministically, so every test that makes this change
    gets the same requirements hash.
    """
    pkg = write_package(pathlib.Path(workdir) / "extra-src", "vumi_extra", "1.0")
    wheel = sample.build_wheel(pkg, EXTRA, "1.0", pathlib.Path(workdir) / "extra-dist")
    sample.commit_file(repo, ENV, f"wheels/{wheel.name}", wheel.read_bytes(), "Add the vumi-extra wheel")
    old = (pathlib.Path(repo) / REQUIREMENTS).read_text()
    return sample.commit_file(repo, ENV, REQUIREMENTS, old + f"{EXTRA}==1.0\n", "Require vumi-extra")


def rebuild_sample_lib(repo, workdir, version_text):
    """Replace the bundled vumi-sample-lib 1.0 wheel by one with other content (same name and version)."""
    pkg = write_package(pathlib.Path(workdir) / "lib-src", "vumi_sample_lib", version_text)
    wheel = sample.build_wheel(pkg, sample.LIB_NAME, sample.LIB_VERSION, pathlib.Path(workdir) / "lib-dist")
    return sample.commit_file(repo, ENV, f"wheels/{wheel.name}", wheel.read_bytes(), "Patch vumi-sample-lib")


def venv_of(root, release):
    return pathlib.Path(root) / "releases" / release / "ve"


def shared_venvs(root):
    path = pathlib.Path(root) / "shared" / "virtualenvs"
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def tree_snapshot(top):
    """Every path under ``top`` with its kind, mtime and content hash (a symlink: its target)."""
    return tree.snapshot(top, level="contents")


def python_in(venv, code):
    """Run ``code`` with a virtualenv's python: (exit code, stripped stdout + stderr)."""
    proc = subprocess.run(
        [str(pathlib.Path(venv) / "bin" / "python"), "-c", code],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def seed(root, *venvs, wheels=()):
    """Built virtualenvs, made again in an environment's ``shared/virtualenvs`` under their hash."""
    for venv in venvs:
        rebuild_venv(venv, pathlib.Path(root) / "shared" / "virtualenvs" / pathlib.Path(venv).name, wheels)


def processes_mentioning(text):
    """Pids of processes whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lifecycle(minion_opts, origin, make_top, deploy_user):
    """
    One environment, three deploys for real: r1 builds the virtualenv of the
    sample's requirements (A), r2 reuses it, then the requirements gain a
    package and r3 builds a second one (B). A is snapshotted around r3.
    """
    top = make_top("venv-lifecycle")
    with module_env(minion_opts, origin, top, owner=deploy_user, lock_timeout=60) as env:
        vumi, repo, base_dir, root = env.vumi, env.repo, env.base_dir, env.root
        r1 = vumi.deploy(ENV)
        r2 = vumi.deploy(ENV)
        venv_a = root / "shared" / "virtualenvs" / r1["requirements_hash"]
        a_before = tree_snapshot(venv_a)
        add_extra_requirement(repo, top)
        r3 = vumi.deploy(ENV)
        a_after = tree_snapshot(venv_a)  # before anything runs A's python again
        yield types.SimpleNamespace(
            vumi=vumi, repo=repo, base_dir=base_dir, root=root, r1=r1, r2=r2, r3=r3,
            venv_a=venv_a, venv_b=root / "shared" / "virtualenvs" / r3["requirements_hash"],
            a_before=a_before, a_after=a_after,
        )  # fmt: skip


@pytest.fixture
def root(base_dir):
    return env_root(base_dir, ENV)


@pytest.fixture
def seeded(lifecycle, root, deploy_user):
    """The built virtualenvs A (and B), made again in this test's environment (the deploy user's)."""

    def go(*which):
        wheels = sorted(lifecycle.root.glob("releases/*/vumi/wheels"))  # the repository's own (vumi-extra)
        seed(root, *(getattr(lifecycle, f"venv_{w}") for w in which), wheels=wheels)
        users.give(root, deploy_user)

    return go


# --------------------------------------------------------------------------
# Same requirements: one shared virtualenv
# --------------------------------------------------------------------------


def test_releases_with_the_same_requirements_share_one_virtualenv(lifecycle):
    root, r1, r2 = lifecycle.root, lifecycle.r1, lifecycle.r2
    assert r1["virtualenv_built"] is True
    assert r2["virtualenv_built"] is False
    assert r1["release"] != r2["release"]
    assert r1["requirements_hash"] == r2["requirements_hash"]

    shared = root / "shared" / "virtualenvs" / r1["requirements_hash"]
    for result in (r1, r2):
        ve = venv_of(root, result["release"])
        assert ve.is_symlink()
        assert os.path.realpath(ve) == os.path.realpath(shared)
        manifest = json.loads((root / "releases" / result["release"] / "release.json").read_text())
        assert manifest["requirements_hash"] == r1["requirements_hash"]
        assert manifest["virtualenv"] == os.path.realpath(shared)
    assert (shared / MARKER).is_file()
    # one virtualenv per requirement set (r3 has the other one), not one per release
    assert shared_venvs(root) == sorted({r1["requirements_hash"], lifecycle.r3["requirements_hash"]})


# --------------------------------------------------------------------------
# Changed requirements: a new virtualenv, the old one left alone
# --------------------------------------------------------------------------


def test_changed_requirements_build_a_new_virtualenv_and_leave_the_old_one_intact(lifecycle):
    vumi, root, r1, r2, r3 = lifecycle.vumi, lifecycle.root, lifecycle.r1, lifecycle.r2, lifecycle.r3
    assert r3["virtualenv_built"] is True
    assert r3["requirements_hash"] != r1["requirements_hash"]
    assert os.path.realpath(venv_of(root, r3["release"])) == os.path.realpath(lifecycle.venv_b)
    assert (lifecycle.venv_b / MARKER).is_file()
    assert current_target(lifecycle.base_dir, ENV) == f"releases/{r3['release']}"

    # the old virtualenv: not one file, mtime or byte changed, marker included
    assert MARKER in lifecycle.a_before
    assert lifecycle.a_after == lifecycle.a_before
    # and the older kept releases still use it
    for old in (r1, r2):
        assert os.path.realpath(venv_of(root, old["release"])) == os.path.realpath(lifecycle.venv_a)
    assert [r["release"] for r in vumi.releases(ENV)] == [r1["release"], r2["release"], r3["release"]]

    # the new release's virtualenv has the new package; the old one does not
    probe = "python -c 'import vumi_extra, vumi_sample_lib; print(vumi_extra.VERSION)'"
    new = vumi.execute(ENV, probe)
    assert (new["release"], new["retcode"], new["stdout"].strip()) == (r3["release"], 0, "1.0")
    old = vumi.execute(ENV, probe, release=r1["release"])
    assert old["retcode"] != 0
    assert "No module named 'vumi_extra'" in old["stderr"]
    assert python_in(lifecycle.venv_a, "import vumi_sample_lib")[0] == 0


def test_a_changed_local_package_gives_a_new_hash_with_the_same_requirements_text(vumi, repo, root, seeded, tmp_path):
    seeded("a")
    first = vumi.deploy(ENV)
    assert first["virtualenv_built"] is False  # the seed: same content, same hash

    requirements_before = (repo / REQUIREMENTS).read_bytes()
    rebuild_sample_lib(repo, tmp_path, "1.0-patched")
    changed = sample.git(repo, "diff", "--name-only", "HEAD~1", "HEAD").split()
    assert changed == [f"wheels/vumi_sample_lib-{sample.LIB_VERSION}-py3-none-any.whl"]
    assert (repo / REQUIREMENTS).read_bytes() == requirements_before

    assert vumi.current(ENV)["requirements_changed"] is False  # nothing fetched yet
    second = vumi.deploy(ENV)
    assert second["requirements_hash"] != first["requirements_hash"]
    assert second["virtualenv_built"] is True
    assert shared_venvs(root) == sorted([first["requirements_hash"], second["requirements_hash"]])
    code = "import vumi_sample_lib; print(vumi_sample_lib.VERSION)"
    assert python_in(venv_of(root, second["release"]), code) == (0, "1.0-patched")
    assert python_in(venv_of(root, first["release"]), code) == (0, "1.0")


# --------------------------------------------------------------------------
# An interrupted build is never reused
# --------------------------------------------------------------------------


@pytest.fixture
def salt_call_config(tmp_path, vumi_config):
    """A masterless minion config; the test's settings (the deploy user's, if any) its ``vumi`` options."""
    return failures.salt_call_config(tmp_path / "call", vumi_config)


def test_an_interrupted_build_is_not_reused(vumi, repo, root, base_dir, seeded, salt_call_config, tmp_path):
    seeded("a")
    before = vumi.deploy(ENV)
    add_extra_requirement(repo, tmp_path)
    known = set(shared_venvs(root))

    salt_call = pathlib.Path(sys.executable).with_name("salt-call")
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        [str(salt_call), "--local", "-c", str(salt_call_config), "--out=json", "vumi.deploy", ENV],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,  # its pip and venv children die with it
    )  # fmt: skip
    try:
        assert wait_for(lambda: set(shared_venvs(root)) - known or proc.poll() is not None, timeout=60, interval=0.01)
        assert proc.poll() is None, proc.stdout.read().decode()
        (half,) = set(shared_venvs(root)) - known
        half_built = root / "shared" / "virtualenvs" / half
        assert not (half_built / MARKER).exists()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()
    assert wait_for(lambda: not processes_mentioning(str(tmp_path)))

    # left behind: a half-built virtualenv without a marker, current untouched
    assert half_built.is_dir() and not (half_built / MARKER).exists()
    assert current_target(base_dir, ENV) == f"releases/{before['release']}"
    assert vumi.current(ENV)["release"] == before["release"]
    (interrupted,) = [r for r in vumi.releases(ENV) if r["release"] != before["release"]]
    assert (interrupted["state"], interrupted["current"]) == ("incomplete", False)

    # the next deploy builds it again rather than trusting it
    after = vumi.deploy(ENV, lock_timeout=20)
    # the same key from salt-call and from here (one interpreter, however it is named)
    assert after["requirements_hash"] == half
    assert after["virtualenv_built"] is True
    assert (half_built / MARKER).is_file()
    assert os.path.realpath(venv_of(root, after["release"])) == os.path.realpath(half_built)
    assert current_target(base_dir, ENV) == f"releases/{after['release']}"
    assert (root / "failed" / interrupted["release"]).is_dir()
    works = vumi.execute(ENV, "python -c 'import vumi_extra, vumi_sample_lib; print(vumi_extra.VERSION)'")
    assert (works["retcode"], works["stdout"].strip()) == (0, "1.0")


# --------------------------------------------------------------------------
# cleanup drops only virtualenvs no kept release uses
# --------------------------------------------------------------------------


def _two_requirement_sets(vumi, repo, seeded, tmp_path):
    seeded("a")
    old = vumi.deploy(ENV)
    # seeded only now: every deploy prunes the virtualenvs no release uses
    seeded("b")
    add_extra_requirement(repo, tmp_path)
    new = vumi.deploy(ENV)
    assert old["requirements_hash"] != new["requirements_hash"]
    assert (old["virtualenv_built"], new["virtualenv_built"]) == (False, False)  # both seeded
    return old, new


def test_cleanup_removes_virtualenvs_no_kept_release_uses(vumi, repo, root, seeded, tmp_path):
    old, new = _two_requirement_sets(vumi, repo, seeded, tmp_path)
    venv_old = root / "shared" / "virtualenvs" / old["requirements_hash"]
    venv_new = root / "shared" / "virtualenvs" / new["requirements_hash"]

    cleaned = vumi.cleanup(ENV, limit=1)
    assert cleaned["removed"] == [old["release"]]
    assert cleaned["kept"] == [new["release"]]
    assert cleaned["virtualenvs_removed"] == [old["requirements_hash"]]
    assert not venv_old.exists()
    assert (venv_new / MARKER).is_file()
    assert shared_venvs(root) == [new["requirements_hash"]]
    assert python_in(venv_of(root, new["release"]), "import vumi_extra")[0] == 0


def test_cleanup_keeps_the_virtualenv_of_a_rolled_back_current_release(vumi, repo, root, seeded, tmp_path):
    old, new = _two_requirement_sets(vumi, repo, seeded, tmp_path)
    stray = root / "shared" / "virtualenvs" / "0123456789abcdef"  # no release uses it
    stray.mkdir()
    assert vumi.rollback(ENV)["release"] == old["release"]

    cleaned = vumi.cleanup(ENV, limit=1)
    assert cleaned["removed"] == []  # the newest, plus current
    assert cleaned["kept"] == [old["release"], new["release"]]
    assert cleaned["virtualenvs_removed"] == [stray.name]
    assert shared_venvs(root) == sorted([old["requirements_hash"], new["requirements_hash"]])
    current_ve = venv_of(root, old["release"])
    assert os.path.realpath(current_ve) == os.path.realpath(root / "shared" / "virtualenvs" / old["requirements_hash"])
    assert (current_ve / MARKER).is_file()
    assert vumi.current(ENV)["virtualenv_ok"] is True
    ran = vumi.execute(ENV, "python -c 'import vumi_sample_lib'")
    assert (ran["release"], ran["retcode"]) == (old["release"], 0)


# --------------------------------------------------------------------------
# reuse_virtualenvs: False
# --------------------------------------------------------------------------


def test_without_reuse_a_release_gets_its_own_virtualenv(vumi, root, seeded):
    seeded("a")
    shared = vumi.deploy(ENV)
    venv_a = root / "shared" / "virtualenvs" / shared["requirements_hash"]
    a_before = tree_snapshot(venv_a)

    # same requirements, and still a virtualenv of its own: a real folder in the release
    own = vumi.deploy(ENV, reuse_virtualenvs=False)
    assert own["virtualenv_built"] is True
    assert own["requirements_hash"] == shared["requirements_hash"]
    ve = venv_of(root, own["release"])
    assert ve.is_dir() and not ve.is_symlink()
    assert (ve / MARKER).is_file()
    assert python_in(ve, "import sys, vumi_sample_lib; print(sys.prefix)") == (0, str(ve))
    manifest = json.loads((root / "releases" / own["release"] / "release.json").read_text())
    assert manifest["virtualenv"] == str(ve)
    assert shared_venvs(root) == [shared["requirements_hash"]]  # nothing new shared
    # the shared one is untouched and still the earlier release's
    assert tree_snapshot(venv_a) == a_before
    assert os.path.realpath(venv_of(root, shared["release"])) == os.path.realpath(venv_a)

    # an intact own virtualenv is kept as it is, not rebuilt nor swapped for a link
    again = vumi.create_virtualenv(ENV, reuse_virtualenvs=False)
    assert (again["release"], again["built"], again["virtualenv"]) == (own["release"], False, str(ve))
    assert ve.is_dir() and not ve.is_symlink()

    # the setting is per deploy: the next release with reuse links the shared one again
    back = vumi.deploy(ENV)
    assert back["virtualenv_built"] is False
    assert os.path.realpath(venv_of(root, back["release"])) == os.path.realpath(venv_a)
    assert venv_of(root, own["release"]).is_dir() and not venv_of(root, own["release"]).is_symlink()


# --------------------------------------------------------------------------
# execute and the webapp run inside the release's virtualenv
# --------------------------------------------------------------------------


def test_execute_and_the_webapp_run_in_the_release_virtualenv(vumi, root, seeded, webapps, free_port):
    seeded("a")
    result = vumi.deploy(ENV)
    name = result["release"]
    ve = venv_of(root, name)

    ran = vumi.execute(ENV, "python -c 'import sys; print(sys.prefix)'")
    assert (ran["release"], ran["retcode"]) == (name, 0)
    prefix = ran["stdout"].strip()
    assert os.path.realpath(prefix) == os.path.realpath(ve)
    assert os.path.realpath(prefix) == os.path.realpath(root / "shared" / "virtualenvs" / result["requirements_hash"])
    assert os.path.realpath(prefix) != os.path.realpath(sys.prefix)

    port = free_port()
    webapps.append((ENV, port))
    started = vumi.start_webapp(ENV, port, ports=[port])
    pid = started["pid"]
    status, body = http_get(port)
    assert status == 200
    # vumi_sample_lib is installed only in the virtualenv, never in the interpreter it was made from
    assert (body["lib"], body["release"], body["ppid"]) == (sample.LIB_VERSION, name, pid)
    environ = dict(
        item.split(b"=", 1) for item in pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item
    )
    # a supervised program runs through current: its virtualenv is current's, this release's
    assert os.path.realpath(environ[b"VIRTUAL_ENV"].decode()) == os.path.realpath(ve)
    argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    # gunicorn of that virtualenv, its interpreter the virtualenv's
    assert os.path.realpath(argv[1].decode()) == os.path.realpath(ve / "bin" / "gunicorn"), argv
    assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(ve / "bin" / "python")
    # the interpreter as gunicorn's first line names it: this virtualenv's (a copied one names another's)
    assert os.path.realpath(os.path.dirname(argv[0].decode())) == os.path.realpath(ve / "bin"), argv

    vumi.stop_webapp(ENV, port, ports=[port])
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
