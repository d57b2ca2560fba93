"""
The release lifecycle of the ``vumi`` execution module, against real parts:
git repositories, virtualenvs built by pip (offline, from the sample's
bundled wheel), the sample app's ``manage.py`` and webapp, and ``salt-call``.

Every assertion is about what an operator sees: the tree under
``<base_dir>/vumi/<env>``, ``current``, ``releases/<name>/release.json`` and
``REVISION``, ``history.log``, return values, exit codes and HTTP answers.

Speed: building a virtualenv takes seconds, so the first deploy of a module
wide environment (``first``) builds one for real and the other tests start
from it made again in their own environment (``seed``: not a copy, whose scripts would
name its python), which a deploy then
reuses exactly as it reuses a virtualenv built by an earlier release (same
requirements hash). The tests about building (first deploy, a requirements
change, a pip failure) build for real.
"""

import contextlib
import getpass
import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import textwrap
import types

import pytest
import yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

import make_repo as sample  # tests/conftest.py puts sample/ on sys.path
from support import tree, users
from support.failures import masterless_minion, seed_venv
from support.helpers import (
    clone_origin,
    current_target,
    env_root,
    http_get,
    loaders_for,
    owned_by,
    release_dirs,
    set_vumi_options,
)

ME = getpass.getuser()

#: env/branch names that must never reach the disk or a shell
BAD_NAMES = [
    "..",
    "../etc",
    "staging/../../etc",
    "/etc/passwd",
    "/staging",
    "stag ing",
    " staging",
    "staging\t",
    "stag\x00ing",
    "stag\ning",
    "staging;touch pwned",
    "$(touch pwned)",
    "`touch pwned`",
    "staging|touch pwned",
    "staging&",
    "-rf",
    "--upload-pack=touch pwned",
]


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def empty_pillar(tmp_path_factory):
    """
    The repo's own pillar sets ``base_dir: /var/praekelt`` and pillar wins over
    the minion options: these tests compile an empty pillar instead.
    """
    path = tmp_path_factory.mktemp("pillar-empty")
    (path / "top.sls").write_text("base: {}\n")
    return path


@pytest.fixture(scope="module")
def module_loaders(minion_opts, empty_pillar, tmp_path_factory):
    """
    A loader with ``{}`` as its ``vumi`` minion options. Building one costs
    seconds (saltfactories syncs and refreshes pillar), so the tests share one
    per module, as saltfactories' own example does, and swap the settings in
    place per test (see ``loaders``).
    """
    cachedir = str(tmp_path_factory.mktemp("salt-cache"))
    with loaders_for(minion_opts, {}, empty_pillar, cachedir=cachedir) as loaders:
        yield loaders


@pytest.fixture
def loaders(module_loaders, vumi_config):
    """Overrides conftest's: an empty pillar, this test's settings, the user running the tests."""
    loaders = module_loaders
    vumi_config.setdefault("user", ME)
    set_vumi_options(loaders, vumi_config)
    # never deploy anywhere but the test's own temp dir
    assert loaders.modules.vumi.settings("staging")["base_dir"] == vumi_config["base_dir"]
    try:
        yield loaders
    finally:
        loaders.reset_state()  # clears __context__
        set_vumi_options(loaders, {})


@pytest.fixture(scope="module")
def first(minion_opts, origin, empty_pillar, tmp_path_factory, deploy_user):
    """
    One environment per module, deployed once for real (the virtualenv is
    built): the first-deploy test reads it, the bad-input tests check that they
    change nothing in it, and its virtualenv seeds the other tests'.
    """
    with contextlib.ExitStack() as stack:
        top = tmp_path_factory.mktemp("first") if deploy_user is None else stack.enter_context(users.reachable_dir())
        yield from _first(minion_opts, origin, empty_pillar, top, deploy_user)


def _first(minion_opts, origin, empty_pillar, top, deploy_user):
    repo = users.give(clone_origin(origin, top / "upstream"), deploy_user)
    base_dir = top / "srv"
    base_dir.mkdir()
    settings = {
        "base_dir": str(base_dir),
        "app": "vumi",
        "repo_url": str(repo),
        "ports": [],
        "user": ME,
        **owned_by(deploy_user),
        # bad branch names can only come from pillar/options (the first
        # argument of every function is already called ``branch``)
        "environments": {f"evil{i}": {"branch": bad} for i, bad in enumerate(BAD_NAMES)},
    }
    with loaders_for(minion_opts, settings, empty_pillar, cachedir=str(top / "salt-cache")) as loaders:
        assert loaders.modules.vumi.settings("staging")["base_dir"] == str(base_dir)
        result = loaders.modules.vumi.deploy("staging")
        yield types.SimpleNamespace(
            vumi=loaders.modules.vumi,
            base_dir=base_dir,
            repo=repo,
            result=result,
            venv=pathlib.Path(os.path.realpath(result["path"] + "/ve")),
        )


@pytest.fixture
def seed(first, base_dir, deploy_user):
    """Copy the module's virtualenv into this test's environment, where a deploy reuses it."""

    def seed_env(env="staging"):
        return seed_venv(first.venv, base_dir, env, deploy_user)

    return seed_env


@pytest.fixture
def deployed(vumi, seed):
    """``staging`` deployed once (with a seeded virtualenv)."""
    seed()
    return vumi.deploy("staging")


# --------------------------------------------------------------------------
# Helpers: what a user looks at
# --------------------------------------------------------------------------


def manifest(base_dir, name, env="staging"):
    return json.loads((env_root(base_dir, env) / "releases" / name / "release.json").read_text())


def revision_file(base_dir, name, env="staging"):
    return (env_root(base_dir, env) / "releases" / name / "REVISION").read_text().strip()


def history(base_dir, env="staging"):
    return tree.history(env_root(base_dir, env))


def code_head(base_dir, name, env="staging"):
    return sample.git(env_root(base_dir, env) / "releases" / name / "vumi", "rev-parse", "HEAD")


def tip(repo, branch="staging"):
    return sample.git(repo, "rev-parse", f"refs/heads/{branch}")


def snapshot(top, skip=None):
    """Every path under ``top`` with its kind (a link's target, a file's size), ``skip`` left out."""
    return tree.snapshot(top, skip or ())


def venv_python(base_dir, name, env="staging"):
    return env_root(base_dir, env) / "releases" / name / "ve" / "bin" / "python"


def run_python(python, code):
    return subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout.strip()


# --------------------------------------------------------------------------
# First deploy, second deploy, pinned revisions
# --------------------------------------------------------------------------


def test_first_deploy_builds_the_layout_a_release_and_its_virtualenv(first):
    base_dir, result = first.base_dir, first.result
    root = env_root(base_dir)
    name = result["release"]

    # the layout of CONTRACT.md
    for folder in ("releases", "shared/logs", "shared/repositories/vumi/.git", "shared/tmp/pids"):
        assert (root / folder).is_dir(), folder
    assert release_dirs(base_dir) == [name]
    assert len(name) == 15 and name[8] == "_" and name.replace("_", "").isdigit()
    assert current_target(base_dir) == f"releases/{name}"
    assert (root / "current").resolve() == (root / "releases" / name).resolve()

    # the release: code at the branch's tip, REVISION, manifest
    sha = tip(first.repo)
    assert result["revision"] == sha
    assert result["previous"] is None
    assert result["virtualenv_built"] is True
    assert revision_file(base_dir, name) == sha
    assert code_head(base_dir, name) == sha
    code = root / "releases" / name / "vumi"
    assert (code / "manage.py").is_file()
    man = manifest(base_dir, name)
    assert man["revision"] == sha
    assert man["branch"] == "staging"
    assert man["env"] == "staging"
    assert man["release"] == name
    assert man["pinned"] is None
    assert man["repo_url"] == str(first.repo)
    assert man["virtualenv"] == str(first.venv)

    # shared folders linked into the code folder
    for shared in ("logs", "tmp"):
        link = code / shared
        assert link.is_symlink(), shared
        assert link.resolve() == (root / "shared" / shared).resolve()
    # ... and git does not see them as changes
    assert sample.git(code, "status", "--porcelain") == ""

    # the virtualenv has the requirements, installed by pip from the bundled wheel
    python = venv_python(base_dir, name)
    out = run_python(python, "import sys, vumi_sample_lib; print(sys.prefix != sys.base_prefix)")
    assert out == "True"
    # the installer's cache (here the session's cache_dir; by default shared/tmp/cache)
    assert pathlib.Path(first.vumi.paths("staging")["uv_cache"]).is_dir()

    # the history
    (entry,) = history(base_dir)
    assert entry["action"] == "deploy"
    assert entry["release"] == name
    assert entry["revision"] == sha
    assert entry["previous"] is None

    # what releases() and current() say
    (info,) = first.vumi.releases("staging")
    assert info["release"] == name
    assert info["current"] is True
    assert info["state"] == "complete"
    assert info["revision"] == sha
    cur = first.vumi.current("staging")
    assert cur["release"] == name
    assert cur["revision"] == sha
    assert cur["virtualenv_ok"] is True
    assert cur["requirements_changed"] is False
    assert cur["code"] == str(code)


def test_second_deploy_cuts_a_new_release_and_leaves_the_webapp_alone(
    vumi, repo, base_dir, deployed, free_port, webapps
):
    first_name, first_sha = deployed["release"], deployed["revision"]
    port = free_port()
    webapps.append(("staging", port))
    vumi.start_webapp("staging", port, ports=[port])
    status, body = http_get(port)
    assert status == 200
    assert (body["release"], body["revision"]) == (first_name, first_sha)

    new_sha = sample.commit_file(repo, "staging", "NEWS", "a fix\n", "Fix something")
    second = vumi.deploy("staging")

    name = second["release"]
    assert name != first_name and name > first_name
    assert second["revision"] == new_sha != first_sha
    assert second["previous"] == first_name
    assert release_dirs(base_dir) == [first_name, name]  # the first release is kept
    assert current_target(base_dir) == f"releases/{name}"
    assert revision_file(base_dir, name) == new_sha
    assert manifest(base_dir, name)["revision"] == new_sha
    assert revision_file(base_dir, first_name) == first_sha
    assert (env_root(base_dir) / "releases" / name / "vumi" / "NEWS").read_text() == "a fix\n"
    assert not (env_root(base_dir) / "releases" / first_name / "vumi" / "NEWS").exists()

    # same requirements: the virtualenv is reused, not rebuilt
    assert second["virtualenv_built"] is False
    releases = env_root(base_dir) / "releases"
    assert os.path.realpath(releases / name / "ve") == os.path.realpath(releases / first_name / "ve")

    # a bare deploy does not restart the webapp: it still serves the first release
    status, body = http_get(port)
    assert (body["release"], body["revision"]) == (first_name, first_sha)
    vumi.stop_webapp("staging", port, ports=[port])

    assert [(e["action"], e["release"], e["previous"]) for e in history(base_dir)] == [
        ("deploy", first_name, None),
        ("deploy", name, first_name),
    ]
    listed = vumi.releases("staging")
    assert [(r["release"], r["current"], r["revision"]) for r in listed] == [
        (first_name, False, first_sha),
        (name, True, new_sha),
    ]
    assert vumi.current("staging")["release"] == name


def test_deploy_of_a_pinned_revision_full_short_or_tag(vumi, repo, base_dir, seed):
    seed()
    old_sha = tip(repo)
    new_sha = sample.commit_file(repo, "staging", "NEWS", "later\n", "Later work")

    full = vumi.deploy("staging", revision=old_sha)
    assert full["revision"] == old_sha
    assert revision_file(base_dir, full["release"]) == old_sha
    assert code_head(base_dir, full["release"]) == old_sha
    assert manifest(base_dir, full["release"])["pinned"] == old_sha
    assert not (env_root(base_dir) / "releases" / full["release"] / "vumi" / "NEWS").exists()

    short = vumi.deploy("staging", revision=old_sha[:7])
    assert short["revision"] == old_sha  # resolved to the full commit id
    assert revision_file(base_dir, short["release"]) == old_sha
    assert manifest(base_dir, short["release"])["pinned"] == old_sha[:7]
    assert current_target(base_dir) == f"releases/{short['release']}"

    sample.git(repo, "tag", "v1.0", old_sha)
    tagged = vumi.deploy("staging", revision="v1.0")
    assert tagged["revision"] == old_sha
    assert code_head(base_dir, tagged["release"]) == old_sha

    latest = vumi.deploy("staging")  # no pin: the branch's tip again
    assert latest["revision"] == new_sha
    assert revision_file(base_dir, latest["release"]) == new_sha
    assert len(release_dirs(base_dir)) == 4


def test_topic_branch_deploys_into_its_own_folder(vumi, repo, base_dir, seed):
    sample.git(repo, "branch", "topics/foo", "staging")
    sha = sample.commit_file(repo, "topics/foo", "TOPIC", "foo\n", "Work on foo")
    seed("topics/foo")

    result = vumi.deploy("topics/foo")

    root = base_dir / "vumi" / "topics~foo"
    assert sorted(p.name for p in (base_dir / "vumi").iterdir()) == ["topics~foo"]
    assert result["path"] == str(root / "releases" / result["release"])
    assert os.readlink(root / "current") == f"releases/{result['release']}"
    assert (root / "releases" / result["release"] / "REVISION").read_text().strip() == sha
    man = json.loads((root / "releases" / result["release"] / "release.json").read_text())
    assert (man["env"], man["branch"], man["revision"]) == ("topics/foo", "topics/foo", sha)
    assert (root / "releases" / result["release"] / "vumi" / "TOPIC").is_file()
    assert vumi.paths("topics/foo")["root"] == str(root)
    # the app has no settings file for this branch: it runs with its defaults
    out = vumi.execute("topics/foo", "./manage.py showsettings")
    assert json.loads(out["stdout"])["greeting"] == "hello from default"


# --------------------------------------------------------------------------
# update, execute, create_virtualenv, layout
# --------------------------------------------------------------------------


def test_update_cuts_the_new_commit_beside_the_current_release_and_switches_to_it(vumi, repo, base_dir, deployed):
    name, old_sha = deployed["release"], deployed["revision"]

    nothing = vumi.update("staging")
    assert nothing["changed"] is False and nothing["release"] == name
    assert nothing["old_revision"] == nothing["new_revision"] == old_sha
    assert release_dirs(base_dir) == [name]

    new_sha = sample.commit_file(repo, "staging", "NEWS", "hotfix\n", "Hotfix")
    result = vumi.update("staging")

    new = result["release"]
    assert new != name and result["previous"] == name
    assert (result["old_revision"], result["new_revision"], result["changed"]) == (old_sha, new_sha, True)
    assert result["requirements_changed"] is False and result["virtualenv_built"] is False  # the same virtualenv
    assert release_dirs(base_dir) == [name, new]
    assert current_target(base_dir) == f"releases/{new}"
    code = env_root(base_dir) / "releases" / new / "vumi"
    assert (code / "NEWS").read_text() == "hotfix\n"
    assert code_head(base_dir, new) == revision_file(base_dir, new) == manifest(base_dir, new)["revision"] == new_sha
    assert code_head(base_dir, name) == old_sha  # the release it replaced is untouched
    assert not (env_root(base_dir) / "releases" / name / "vumi" / "NEWS").exists()
    assert (code / "logs").is_symlink() and (code / "tmp").is_symlink()
    assert sample.git(code, "status", "--porcelain") == ""
    entry = history(base_dir)[-1]
    assert (entry["action"], entry["release"], entry["revision"], entry["previous"], entry["previous_revision"]) == (
        "update", new, new_sha, name, old_sha
    )  # fmt: skip
    assert vumi.current("staging")["revision"] == new_sha
    assert vumi.rollback("staging", restart=False)["release"] == name  # back to what it replaced


def test_update_refuses_without_a_release_or_with_a_pin(vumi, base_dir, deployed):
    with pytest.raises(SaltInvocationError, match="pinned to revision abc1234"):
        vumi.update("staging", revision="abc1234")
    with pytest.raises(CommandExecutionError, match="production"):
        vumi.update("production")  # never deployed
    assert not (base_dir / "vumi" / "production").exists()


def test_execute_runs_in_the_code_folder_with_the_virtualenv(vumi, loaders, base_dir, deployed):
    name = deployed["release"]
    root = env_root(base_dir)

    ok = vumi.execute("staging", "./manage.py syncdb")
    assert ok["retcode"] == 0
    assert ok["release"] == name
    assert "Applying pages.0001_initial... OK" in ok["stdout"]
    # tmp/ of the code folder is the shared one: the database outlives the release
    assert (root / "shared" / "tmp" / "sample.sqlite").is_file()
    assert loaders.context.get("retcode", 0) == 0

    env = vumi.execute("staging", 'echo "$VIRTUAL_ENV"; pwd; ./manage.py showsettings')
    venv_line, cwd_line, settings_line = env["stdout"].splitlines()
    assert os.path.realpath(venv_line) == os.path.realpath(root / "releases" / name / "ve")
    assert os.path.realpath(cwd_line) == os.path.realpath(root / "releases" / name / "vumi")
    assert json.loads(settings_line) == {"greeting": "hello from staging", "settings": "environments.staging"}
    prefix = vumi.execute("staging", 'python -c "import sys; print(sys.prefix)"')["stdout"]
    assert os.path.realpath(prefix) == os.path.realpath(root / "releases" / name / "ve")

    bad = vumi.execute("staging", "./manage.py fail")
    assert bad["retcode"] == 3
    assert "failing on purpose" in bad["stderr"]
    assert loaders.context["retcode"] == 3  # what makes the Salt job fail

    with pytest.raises(SaltInvocationError, match="20000101_000000"):
        vumi.execute("staging", "true", release="20000101_000000")
    with pytest.raises(SaltInvocationError, match=r"'\.\./x'"):
        vumi.execute("staging", "true", release="../x")
    for command in ("", "   ", "true\x00rm -rf /"):
        with pytest.raises(SaltInvocationError, match="invalid command"):
            vumi.execute("staging", command)


def test_internal_probes_do_not_fail_the_job(vumi, loaders, repo, deployed):
    # remote_revision probes the cached clone for a pin it cannot find: that
    # git command fails, the function answers None, and the job is a success
    assert vumi.remote_revision("staging", revision="deadbee") is None
    assert loaders.context.get("retcode", 0) == 0
    assert vumi.remote_revision("staging") == tip(repo)
    assert vumi.remote_revision("staging", revision=deployed["revision"][:7]) == deployed["revision"]


def test_execute_in_a_named_older_release(vumi, repo, base_dir, deployed):
    sample.commit_file(repo, "staging", "NEWS", "x\n", "x")
    vumi.deploy("staging")
    out = vumi.execute("staging", "cat ../REVISION", release=deployed["release"])
    assert out["stdout"].strip() == deployed["revision"]


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_requirements_change_builds_a_new_virtualenv_and_cleanup_drops_the_old(
    vumi, repo, base_dir, deployed, installer
):
    root = env_root(base_dir)
    name = deployed["release"]
    old_venv = os.path.realpath(root / "releases" / name / "ve")

    same = vumi.create_virtualenv("staging")
    assert same["built"] is False
    assert (same["release"], same["virtualenv"]) == (name, old_venv)

    # a new requirement: a source distribution that pip builds (and caches) offline
    sample.commit_file(repo, "staging", "wheels/vumi_extra-1.0.tar.gz", _extra_sdist(), "Add extra")
    sample.commit_file(
        repo, "staging", "config/requirements.pip",
        "--no-index\n--find-links wheels\nvumi-sample-lib==1.0\nvumi-extra==1.0\n", "Require extra",
    )  # fmt: skip
    # vumi.update cuts the commit as a new release: its requirements changed, so a new virtualenv
    updated = vumi.update("staging", installer=installer)
    assert updated["requirements_changed"] is True and updated["virtualenv_built"] is True
    new = updated["release"]
    venv = os.path.realpath(root / "releases" / new / "ve")
    assert venv != old_venv and os.path.realpath(root / "releases" / name / "ve") == old_venv
    assert vumi.current("staging")["requirements_changed"] is False
    same = vumi.create_virtualenv("staging", installer=installer)
    assert (same["built"], same["release"], same["virtualenv"]) == (False, new, venv)
    assert (
        run_python(venv_python(base_dir, new), "import vumi_extra, vumi_sample_lib; print(vumi_extra.VERSION)") == "1.0"
    )
    cache = pathlib.Path(vumi.paths("staging")["uv_cache"]).parent
    if installer == "pip":
        cached = [p.name for p in (cache / "pip").rglob("*.whl")]
        assert "vumi_extra-1.0-py3-none-any.whl" in cached  # pip's cache is the shared one
        assert (pathlib.Path(venv) / "bin" / "pip").exists()
    else:  # uv's cache is the shared one, and uv built the virtualenv (it gives it no pip)
        assert any((cache / "uv").rglob("vumi_extra*")), sorted(p.name for p in (cache / "uv").rglob("*"))[:20]
        assert not (pathlib.Path(venv) / "bin" / "pip").exists()
    man = manifest(base_dir, new)
    assert man["requirements_hash"] == same["requirements_hash"]
    assert man["virtualenv"] == venv
    cur = vumi.current("staging")
    assert cur["requirements_changed"] is False and cur["virtualenv_ok"] is True

    # once the release that used it is gone, so is the old virtualenv
    cleaned = vumi.cleanup("staging", limit=1)
    assert cleaned["removed"] == [name]
    assert cleaned["virtualenvs_removed"] == [os.path.basename(old_venv)]
    assert not os.path.exists(old_venv)
    assert os.path.isdir(venv)
    rebuilt = {"virtualenv": venv}

    again = vumi.deploy("staging")  # same requirements as the rebuilt one: reused
    assert again["virtualenv_built"] is False
    assert os.path.realpath(root / "releases" / again["release"] / "ve") == rebuilt["virtualenv"]


def test_create_virtualenv_of_a_named_release_and_unknown_ones(vumi, base_dir, deployed):
    out = vumi.create_virtualenv("staging", release=deployed["release"])
    assert out["release"] == deployed["release"] and out["built"] is False
    with pytest.raises(SaltInvocationError, match="20000101_000000"):
        vumi.create_virtualenv("staging", release="20000101_000000")
    with pytest.raises(SaltInvocationError, match=r"'\.\./x'"):
        vumi.create_virtualenv("staging", release="../x")


def test_layout_is_idempotent(vumi, base_dir):
    root = env_root(base_dir)
    made = vumi.layout("staging", cache_dir=None)  # the environment's own caches
    assert made["path"] == str(root)
    expected = {root / p for p in ("", "releases", "shared", "shared/logs", "shared/repositories",
                                   "shared/tmp", "shared/tmp/cache", "shared/tmp/cache/pip",
                                   "shared/tmp/pids")}  # fmt: skip
    assert expected <= {pathlib.Path(p) for p in made["created"]}
    assert all(p.is_dir() for p in expected)
    before = snapshot(base_dir)
    assert vumi.layout("staging", cache_dir=None)["created"] == []
    assert snapshot(base_dir) == before
    assert not (root / "current").exists()
    assert vumi.releases("staging") == []
    assert vumi.current("staging") is None


def test_layout_keeps_a_deployed_environment(vumi, base_dir, deployed):
    before = snapshot(base_dir)
    assert vumi.layout("staging")["created"] == []
    assert snapshot(base_dir) == before


# --------------------------------------------------------------------------
# rollback, cleanup, pruning
# --------------------------------------------------------------------------


def _deploy_commits(vumi, repo, count):
    """``count`` deploys, each of a new commit: [(release, sha)]."""
    out = []
    for i in range(count):
        sha = sample.commit_file(repo, "staging", "NEWS", f"change {i}\n", f"Change {i}")
        result = vumi.deploy("staging")
        assert result["revision"] == sha
        out.append((result["release"], sha))
    return out


def test_a_rollback_whose_port_does_not_come_back_says_it_switched_and_stops_the_roll(
    vumi, repo, base_dir, seed, webapps, free_port
):
    seed()
    ports = [free_port(), free_port()]
    webapps.extend(("staging", p) for p in ports)
    first = vumi.deploy("staging")
    sample.commit_file(repo, "staging", "NEWS", "second\n", "a second release")
    second = vumi.deploy("staging")
    for port in ports:
        vumi.start_webapp("staging", port, ports=ports)
    # the release to go back to cannot start any more: its WSGI module fails as it loads
    wsgi = env_root(base_dir) / "releases" / first["release"] / "vumi" / "sampleapp" / "wsgi.py"
    wsgi.write_text(wsgi.read_text() + "\nraise SystemExit('broken on purpose')\n")
    with pytest.raises(CommandExecutionError) as exc:
        vumi.rollback("staging", ports=ports)
    message = str(exc.value)
    low, high = ports  # the roll goes port by port, in pillar order
    assert f"rolled back: current is release {first['release']} (was {second['release']})" in message, message
    assert f"stopped at port {low}" in message and f"left as they were: {high}" in message, message
    assert current_target(base_dir) == f"releases/{first['release']}"
    status, body = http_get(high)  # the roll stopped at the first port: the second still serves
    assert status == 200 and body["release"] == second["release"], body


def test_a_rollback_needs_supervisord_only_when_it_has_ports_to_restart(vumi, repo, base_dir, seed, tmp_path):
    seed()
    (r1, _), (r2, _) = _deploy_commits(vumi, repo, 2)
    away = tmp_path / "supervisord.conf"
    away.write_text(f"[unix_http_server]\nfile={tmp_path}/gone.sock\n")
    supervisor = {"conf_file": str(away)}
    # no ports: nothing to restart, supervisord is not asked
    assert vumi.rollback("staging", ports=[], supervisor=supervisor)["release"] == r1
    assert vumi.rollback("staging", r2, ports=[], supervisor=supervisor)["restarted"] == []
    # ports to restart and supervisord away: refused before the switch, nothing recorded
    before = history(base_dir)
    with pytest.raises(CommandExecutionError, match=rf"supervisord is not reachable on {tmp_path}/gone.sock"):
        vumi.rollback("staging", ports=[8000], supervisor=supervisor)
    assert current_target(base_dir) == f"releases/{r2}" and history(base_dir) == before


def test_rollback_follows_the_history(vumi, repo, base_dir, seed):
    seed()
    (r1, s1), (r2, s2), (r3, s3) = _deploy_commits(vumi, repo, 3)

    back = vumi.rollback("staging")
    assert back == {"release": r2, "previous": r3, "revision": s2, "restarted": []}
    assert current_target(base_dir) == f"releases/{r2}"
    further = vumi.rollback("staging")  # twice in a row: further back, not back and forth
    assert further == {"release": r1, "previous": r2, "revision": s1, "restarted": []}
    assert current_target(base_dir) == f"releases/{r1}"
    with pytest.raises(CommandExecutionError, match="no earlier release"):
        vumi.rollback("staging")
    assert current_target(base_dir) == f"releases/{r1}"

    named = vumi.rollback("staging", r3)
    assert named == {"release": r3, "previous": r1, "revision": s3, "restarted": []}
    assert current_target(base_dir) == f"releases/{r3}"
    assert vumi.rollback("staging")["release"] == r1  # back to where the named rollback came from

    for bad in ("20000101_000000", "../x", "/tmp", r1 + "/.."):
        with pytest.raises(SaltInvocationError) as exc:
            vumi.rollback("staging", bad)
        assert repr(bad) in str(exc.value)
    assert current_target(base_dir) == f"releases/{r1}"
    assert release_dirs(base_dir) == [r1, r2, r3]  # rollbacks never delete

    rollbacks = [e for e in history(base_dir) if e["action"] == "rollback"]
    assert [(e["release"], e["previous"], e["named"]) for e in rollbacks] == [
        (r2, r3, False), (r1, r2, False), (r3, r1, True), (r1, r3, False),
    ]  # fmt: skip
    assert [(r["release"], r["current"]) for r in vumi.releases("staging")] == [
        (r1, True), (r2, False), (r3, False),
    ]  # fmt: skip


def test_cleanup_keeps_the_newest_and_the_current(vumi, repo, base_dir, seed):
    seed()
    names = [name for name, _ in _deploy_commits(vumi, repo, 5)]
    assert release_dirs(base_dir) == names

    out = vumi.cleanup("staging", limit=3)
    assert out["removed"] == names[:2]
    assert out["kept"] == names[2:]
    assert release_dirs(base_dir) == names[2:]
    assert current_target(base_dir) == f"releases/{names[4]}"

    vumi.rollback("staging", names[2])  # the oldest one left
    out = vumi.cleanup("staging", limit=1)
    assert out["removed"] == [names[3]]
    assert out["kept"] == [names[2], names[4]]  # current kept in addition to the newest
    assert current_target(base_dir) == f"releases/{names[2]}"
    assert vumi.current("staging")["virtualenv_ok"] is True

    for bad in (0, -1, "x", True, "1; rm -rf /"):
        with pytest.raises(SaltInvocationError) as exc:
            vumi.cleanup("staging", limit=bad)
        assert repr(bad) in str(exc.value)
    assert release_dirs(base_dir) == [names[2], names[4]]


def test_deploy_prunes_to_keep_releases(vumi, repo, base_dir, seed):
    seed()
    names = []
    for i in range(4):
        sample.commit_file(repo, "staging", "NEWS", f"{i}\n", f"Change {i}")
        names.append(vumi.deploy("staging", keep_releases=2)["release"])
        assert release_dirs(base_dir) == names[-2:]
    assert current_target(base_dir) == f"releases/{names[-1]}"
    # the history still tells the whole story
    assert [e["release"] for e in history(base_dir) if e["action"] == "deploy"] == names


def test_release_names_sort_in_deploy_order(vumi, base_dir, seed):
    # a release from a host whose clock ran ahead: later deploys must still
    # sort after it, even once it is pruned, or "newest" means the wrong thing
    seed()
    vumi.deploy("staging")
    ahead = vumi.prepare("staging", release="20991231_235959")["release"]
    vumi.publish("staging", ahead)
    after = vumi.deploy("staging", keep_releases=1)["release"]
    assert after == "21000101_000000"
    assert release_dirs(base_dir) == [after]
    again = vumi.deploy("staging", keep_releases=1)["release"]
    assert again == "21000101_000001"
    assert current_target(base_dir) == f"releases/{again}"


# --------------------------------------------------------------------------
# Bad input and failures: a clear error, a failed job, nothing lost
# --------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_environment_names_touch_nothing(first, bad, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # where a shell injection would drop its file
    vumi = first.vumi
    before = snapshot(first.base_dir)
    calls = {
        "deploy": lambda: vumi.deploy(bad),
        "prepare": lambda: vumi.prepare(bad),
        "layout": lambda: vumi.layout(bad),
        "update": lambda: vumi.update(bad),
        "execute": lambda: vumi.execute(bad, "./manage.py syncdb"),
        "rollback": lambda: vumi.rollback(bad),
        "cleanup": lambda: vumi.cleanup(bad, limit=1),
        "create_virtualenv": lambda: vumi.create_virtualenv(bad),
        "releases": lambda: vumi.releases(bad),
        "current": lambda: vumi.current(bad),
        "remote_revision": lambda: vumi.remote_revision(bad),
    }
    for what, call in calls.items():
        with pytest.raises(SaltInvocationError) as exc:
            call()
        assert repr(bad) in str(exc.value), what
    assert snapshot(first.base_dir) == before
    assert list(tmp_path.iterdir()) == []
    assert current_target(first.base_dir) == f"releases/{first.result['release']}"


@pytest.mark.parametrize("index", range(len(BAD_NAMES)))
def test_bad_branch_names_touch_nothing(first, index, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    bad = BAD_NAMES[index]
    before = snapshot(first.base_dir)
    for call in (first.vumi.deploy, first.vumi.layout, first.vumi.remote_revision):
        with pytest.raises(SaltInvocationError) as exc:
            call(f"evil{index}")
        assert f"branch {bad!r}" in str(exc.value)
    assert snapshot(first.base_dir) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"revision": "HEAD;touch pwned"}, "'HEAD;touch pwned'"),
        ({"revision": "$(touch pwned)"}, "'$(touch pwned)'"),
        ({"revision": "--upload-pack=touch pwned"}, "'--upload-pack=touch pwned'"),
        ({"revision": "a..b"}, "'a..b'"),
        ({"requirements": "../../../etc/passwd"}, "'../../../etc/passwd'"),
        ({"requirements": "/etc/passwd"}, "'/etc/passwd'"),
        ({"repo_url": "--upload-pack=touch pwned"}, "'--upload-pack=touch pwned'"),
        ({"base_dir": "/"}, "'/'"),
        ({"app": "../vumi"}, "'../vumi'"),
        ({"keep_releases": 0}, "keep_releases 0"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_settings_for_a_deploy_touch_nothing(first, kwargs, named, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    before = snapshot(first.base_dir)
    with pytest.raises(SaltInvocationError) as exc:
        first.vumi.deploy("staging", **kwargs)
    assert named in str(exc.value)
    assert snapshot(first.base_dir) == before
    assert list(tmp_path.iterdir()) == []


def test_unknown_and_malformed_release_names(first):
    before = snapshot(first.base_dir)
    for bad in ("20000101_000000", "../x", "..", "/etc", "20000101_000000/../..", "-rf", "x y"):
        for call in (
            lambda: first.vumi.rollback("staging", bad),
            lambda: first.vumi.create_virtualenv("staging", release=bad),
            lambda: first.vumi.execute("staging", "true", release=bad),
            lambda: first.vumi.publish("staging", bad),
        ):
            with pytest.raises(SaltInvocationError) as exc:
                call()
            assert repr(bad) in str(exc.value)
    assert snapshot(first.base_dir) == before


def _extra_sdist():
    """A source distribution of ``vumi_extra`` with an in-tree PEP 517 backend: pip builds it offline."""
    backend = textwrap.dedent(
        """
        import base64, hashlib, os, zipfile

        def _digest(data):
            return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

        def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
            info = "vumi_extra-1.0.dist-info"
            with open(os.path.join("vumi_extra", "__init__.py"), "rb") as fh:
                files = {"vumi_extra/__init__.py": fh.read()}
            files[info + "/METADATA"] = b"Metadata-Version: 2.1\\nName: vumi_extra\\nVersion: 1.0\\n"
            files[info + "/WHEEL"] = b"Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
            record = "".join(f"{n},{_digest(d)},{len(d)}\\n" for n, d in files.items())
            files[info + "/RECORD"] = (record + info + "/RECORD,,\\n").encode()
            name = "vumi_extra-1.0-py3-none-any.whl"
            with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
                for n, d in files.items():
                    zf.writestr(n, d)
            return name
        """
    )
    files = {
        "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
        "backend.py": backend,
        "vumi_extra/__init__.py": 'VERSION = "1.0"\n',
        "PKG-INFO": "Metadata-Version: 2.1\nName: vumi_extra\nVersion: 1.0\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"vumi_extra-1.0/{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _break_requirements_path(repo):
    sample.git(repo, "checkout", "-q", "staging")
    sample.git(repo, "mv", "config/requirements.pip", "config/reqs.pip")
    sample.git(repo, "commit", "-q", "-m", "Move the requirements")


FAILURES = {
    # name: (prepare the repo, deploy kwargs, stage, text the message names)
    "requirements_kwarg_missing": (None, {"requirements": "config/nope.pip"}, "virtualenv", "config/nope.pip"),
    "requirements_file_gone": (_break_requirements_path, {}, "virtualenv", "config/requirements.pip"),
    "revision_not_in_repo": (None, {"revision": "0123456789abcdef0123456789abcdef01234567"}, "fetch",
                             "'0123456789abcdef0123456789abcdef01234567'"),
    "short_revision_not_in_repo": (None, {"revision": "deadbee"}, "fetch", "'deadbee'"),
    "repo_cannot_be_fetched": (None, {"repo_url": "/nonexistent/vumi.git"}, "fetch", "/nonexistent/vumi.git"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failed_deploy_keeps_current_and_sets_the_release_aside(vumi, repo, base_dir, deployed, case):
    prepare_repo, kwargs, stage, named = FAILURES[case]
    if prepare_repo:
        prepare_repo(repo)
    root = env_root(base_dir)
    good = deployed["release"]
    outside = snapshot(base_dir, skip=root)
    lines = len(history(base_dir))

    with pytest.raises(CommandExecutionError) as exc:
        vumi.deploy("staging", **kwargs)

    message = str(exc.value)
    assert named in message
    assert f"failed at stage {stage!r}" in message
    assert current_target(base_dir) == f"releases/{good}"
    assert release_dirs(base_dir) == [good]
    assert snapshot(base_dir, skip=root) == outside
    entries = history(base_dir)[lines:]
    assert [e["action"] for e in entries] == ["failed"]
    (entry,) = entries
    assert entry["stage"] == stage
    assert entry["previous"] == good
    assert named.strip("'") in entry["reason"]
    if stage == "fetch":  # before a release was cut: nothing to set aside
        assert entry["release"] is None
        assert not (root / "failed").exists()
    else:
        half_built = root / "failed" / entry["release"]
        assert sorted(p.name for p in (root / "failed").iterdir()) == [entry["release"]]
        assert (half_built / "vumi" / "manage.py").is_file()
        assert not (half_built / "release.json").exists()
        assert str(half_built) in message
    # still serving: the next good deploy works
    if kwargs and not prepare_repo:
        assert vumi.deploy("staging")["previous"] == good


def test_pip_failure_keeps_current(vumi, repo, base_dir, deployed):
    sample.commit_file(repo, "staging", "config/requirements.pip",
                       "--no-index\n--find-links wheels\nvumi-sample-lib==9.9\n", "Impossible pin")  # fmt: skip
    with pytest.raises(CommandExecutionError) as exc:
        vumi.deploy("staging")
    message = str(exc.value)
    assert "failed at stage 'virtualenv'" in message
    assert "vumi-sample-lib==9.9" in message
    assert current_target(base_dir) == f"releases/{deployed['release']}"
    entry = history(base_dir)[-1]
    assert (entry["action"], entry["stage"]) == ("failed", "virtualenv")
    assert (env_root(base_dir) / "failed" / entry["release"]).is_dir()
    # the current release still runs
    assert vumi.execute("staging", "./manage.py showsettings")["retcode"] == 0


@pytest.mark.parametrize(
    "env, kwargs, named",
    [
        ("staging", {"repo_url": "/nonexistent/vumi.git"}, "/nonexistent/vumi.git"),
        ("nosuchbranch", {}, "'nosuchbranch'"),
    ],
)
def test_failed_first_deploy_leaves_no_current(vumi, base_dir, env, kwargs, named):
    with pytest.raises(CommandExecutionError) as exc:
        vumi.deploy(env, **kwargs)
    assert named in str(exc.value)
    assert "failed at stage 'fetch'" in str(exc.value)
    root = env_root(base_dir, env)
    assert sorted(p.name for p in base_dir.iterdir()) == ["vumi"]
    assert sorted(p.name for p in (base_dir / "vumi").iterdir()) == [env]
    assert not os.path.lexists(root / "current")
    assert release_dirs(base_dir, env) == []
    assert os.listdir(root / "shared" / "repositories") in ([], ["vumi"])  # no half-made clone left
    if kwargs:
        assert os.listdir(root / "shared" / "repositories") == []
    (entry,) = history(base_dir, env)
    assert (entry["action"], entry["stage"], entry["release"]) == ("failed", "fetch", None)


# --------------------------------------------------------------------------
# The command line: salt-call --local, masterless
# --------------------------------------------------------------------------


@pytest.fixture
def salt_call(tmp_path, repo, base_dir, deploy_user):
    """A masterless minion config in tmp_path, with the settings in pillar."""
    conf = tmp_path / "conf"
    pillar = tmp_path / "pillar"
    state = tmp_path / "salt-state"
    for path in (conf, pillar, state):
        path.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - vumi\n")
    (pillar / "vumi.sls").write_text(
        yaml.safe_dump(
            {
                "vumi": {
                    "base_dir": str(base_dir),
                    "repo_url": str(repo),
                    "user": ME,
                    "ports": [],
                    **owned_by(deploy_user),
                }
            }
        )  # fmt: skip
    )
    (conf / "minion").write_text(yaml.safe_dump(masterless_minion(state, pillar, "vumi-call-")))
    salt_call_bin = pathlib.Path(sys.executable).parent / "salt-call"

    def run(*args):
        proc = subprocess.run(
            [str(salt_call_bin), "--local", "-c", str(conf), "--out=json", *args],
            capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
        )  # fmt: skip
        try:
            data = json.loads(proc.stdout)["local"] if proc.stdout.strip() else None
        except ValueError:
            data = proc.stdout
        return types.SimpleNamespace(returncode=proc.returncode, data=data, stderr=proc.stderr)

    return run


def test_salt_call_local_deploy_and_execute(salt_call, seed, repo, base_dir):
    seed()
    deploy = salt_call("vumi.deploy", "staging")
    assert deploy.returncode == 0, deploy.stderr
    assert deploy.data["virtualenv_built"] is False  # salt-call's python3 keys the seeded one alike
    assert deploy.data["revision"] == tip(repo)
    assert current_target(base_dir) == f"releases/{deploy.data['release']}"

    ok = salt_call("vumi.execute", "staging", "./manage.py syncdb")
    assert ok.returncode == 0, ok.stderr
    assert ok.data["retcode"] == 0
    assert "Synced database" in ok.data["stdout"]

    bad = salt_call("vumi.execute", "staging", "./manage.py fail")
    assert bad.returncode == 1  # a failed job
    assert bad.data["retcode"] == 3
    assert "failing on purpose" in bad.data["stderr"]
    passthrough = salt_call("--retcode-passthrough", "vumi.execute", "staging", "./manage.py fail")
    assert passthrough.returncode == 3  # the command's own exit code

    refused = salt_call("vumi.deploy", "../etc")
    assert refused.returncode != 0
    assert "'../etc'" in json.dumps(refused.data) + refused.stderr
    assert sorted(p.name for p in (base_dir / "vumi").iterdir()) == ["staging"]
