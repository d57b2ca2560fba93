"""
Functional tests of the ``vumi`` states and the ``vumi`` SLS.

Everything is real: the sample app's git repository (one per test), the
virtualenvs, the webapp processes on free loopback ports and the HTTP they
serve. States run through ``state.single`` / ``state.apply`` of Salt's
loader, so ``test=True``, requisites and ``mod_watch`` behave as on a minion.
"""

import getpass
import os
import pathlib
import re
import socket

import pytest
from salt.exceptions import SaltInvocationError

import make_repo as sample  # on sys.path thanks to tests/conftest.py
from support import tree
from support.helpers import answer, current_target, env_root, http_get, loaders_for, pillar_tree, release_dirs

ENV = "staging"


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def pillar_dir(tmp_path, vumi_config):
    """
    A pillar tree like scripts/demo's: the bundle's own pillar files plus one
    file of ours pointing every environment at this test's repo and base_dir.

    The loader compiles pillar from ``pillar_roots``, and pillar wins over the
    minion options ``vumi``: with the bundle's pillar alone every setting would
    be /var/praekelt, github and the ports 8000-8003.
    """
    ours = dict(
        {"user": getpass.getuser()},  # unless the environments are a deploy user's
        **vumi_config,
        environments={"staging": {"ports": []}, "production": {"ports": []}},
    )
    return pillar_tree(tmp_path / "pillar", ours)


@pytest.fixture
def loaders(minion_opts, vumi_config, pillar_dir):
    """Overrides conftest's: the same minion, with the safe pillar tree above."""
    with loaders_for(minion_opts, vumi_config, pillar_dir) as loaders:
        settings = loaders.modules.vumi.settings(ENV)
        assert settings["base_dir"] == vumi_config["base_dir"], settings
        assert settings["repo_url"] == vumi_config["repo_url"], settings
        yield loaders


@pytest.fixture
def states(loaders):
    return loaders.states.vumi


@pytest.fixture
def root(base_dir):
    return env_root(base_dir, ENV)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def snapshot(path):
    """What a user would call "the tree": every path (and link target), plus the history log."""
    path = pathlib.Path(path)
    found = tree.snapshot(path)
    history = path / "vumi" / ENV / "history.log"
    return found, history.read_text() if history.is_file() else None


def tip(repo, branch=ENV):
    return sample.git(repo, "rev-parse", branch)


def new_commit(repo, text, branch=ENV):
    return sample.commit_file(repo, branch, "NEWS", text + "\n", f"news: {text}")


def current_revision(vumi):
    cur = vumi.current(ENV)
    return cur and cur["revision"]


def serving(port):
    """(release, revision, pid) of the webapp answering on ``port``."""
    body = answer(port, ENV)
    assert body["app"] == "sampleapp", body
    return body["release"], body["revision"], body["ppid"]


def port_closed(port):
    with pytest.raises(OSError):
        http_get(port, timeout=2)
    return True


def assert_unchanged(ret):
    assert ret.result is True, ret.comment
    assert ret.changes == {}, ret.changes


# --------------------------------------------------------------------------
# vumi.deployed
# --------------------------------------------------------------------------


def test_deployed_predicts_deploys_then_is_idempotent(states, vumi, repo, base_dir, root):
    first_sha = tip(repo)

    ret = states.deployed(ENV, test=True)
    assert ret.result is None, ret.comment
    assert "nothing is deployed yet" in ret.comment
    assert ret.changes["revision"] == {"old": None, "new": first_sha}
    assert ret.changes["release"]["old"] is None
    assert snapshot(base_dir) == ({}, None), "test=True must not touch the disk"

    ret = states.deployed(ENV)
    assert ret.result is True, ret.comment
    (first,) = release_dirs(base_dir)
    assert ret.changes == {
        "release": {"old": None, "new": first},
        "revision": {"old": None, "new": first_sha},
    }
    assert current_target(base_dir) == f"releases/{first}"
    assert (root / "releases" / first / "REVISION").read_text().strip() == first_sha

    before = snapshot(base_dir)
    assert_unchanged(states.deployed(ENV))
    assert release_dirs(base_dir) == [first]
    assert_unchanged(states.deployed(ENV, test=True))
    assert snapshot(base_dir) == before

    # a new commit on the branch: predicted exactly, then deployed exactly
    second_sha = new_commit(repo, "second")
    ret = states.deployed(ENV, test=True)
    assert ret.result is None, ret.comment
    assert ret.changes["revision"] == {"old": first_sha, "new": second_sha}
    assert ret.changes["release"]["old"] == first
    assert snapshot(base_dir) == before

    ret = states.deployed(ENV)
    assert ret.result is True, ret.comment
    second = release_dirs(base_dir)[-1]
    assert release_dirs(base_dir) == [first, second]
    assert ret.changes == {
        "release": {"old": first, "new": second},
        "revision": {"old": first_sha, "new": second_sha},
    }
    assert current_revision(vumi) == second_sha
    assert current_target(base_dir) == f"releases/{second}"
    assert (root / "releases" / second / "vumi" / "NEWS").read_text() == "second\n"
    assert_unchanged(states.deployed(ENV))

    # pinned to the older commit: deployed, then idempotent (full or short sha)
    ret = states.deployed(ENV, revision=first_sha, test=True)
    assert ret.result is None and ret.changes["revision"]["new"] == first_sha, ret.raw
    ret = states.deployed(ENV, revision=first_sha)
    assert ret.result is True, ret.comment
    third = release_dirs(base_dir)[-1]
    assert ret.changes["revision"] == {"old": second_sha, "new": first_sha}
    assert ret.changes["release"] == {"old": second, "new": third}
    assert current_revision(vumi) == first_sha
    assert not (root / "releases" / third / "vumi" / "NEWS").exists()
    before = snapshot(base_dir)
    assert_unchanged(states.deployed(ENV, revision=first_sha))
    assert_unchanged(states.deployed(ENV, revision=first_sha[:10]))
    assert_unchanged(states.deployed(ENV, revision=first_sha, test=True))
    assert snapshot(base_dir) == before

    # the pin lifted: back to the branch's tip
    ret = states.deployed(ENV)
    assert ret.result is True and ret.changes["revision"]["new"] == second_sha, ret.raw
    assert current_revision(vumi) == second_sha


def test_failed_deploy_keeps_current_and_the_webapp_serving(states, vumi, repo, base_dir, root, free_port, webapps):
    port = free_port()
    assert states.deployed(ENV).result is True
    webapps.append((ENV, port))
    ret = states.webapp_running(ENV, ports=[port])
    assert ret.result is True, ret.comment
    (good,) = release_dirs(base_dir)
    good_sha = current_revision(vumi)
    assert serving(port)[:2] == (good, good_sha)
    pid = serving(port)[2]

    def still_good():
        assert current_target(base_dir) == f"releases/{good}"
        assert release_dirs(base_dir) == [good]
        assert current_revision(vumi) == good_sha
        assert serving(port) == (good, good_sha, pid)

    # a requirements file the code does not have
    ret = states.deployed(ENV, requirements="config/missing.pip")
    assert ret.result is False
    assert "config/missing.pip not found" in ret.comment, ret.comment
    # its one change: the half-built release, set aside for a look
    kept = pathlib.Path(ret.changes["failed_release"]["new"])
    assert ret.changes == {"failed_release": {"old": None, "new": str(kept)}} and kept.parent.name == "failed"
    assert kept.is_dir() and not (kept / "release.json").exists()
    still_good()

    # a repository that cannot be reached (nothing to clone or fetch)
    nowhere = str(base_dir.parent / "no-such-repo")
    ret = states.deployed(ENV, repo_url=nowhere)
    assert ret.result is False
    assert nowhere in ret.comment, ret.comment
    still_good()
    ret = states.deployed(ENV, repo_url=nowhere, test=True)
    assert ret.result is False and nowhere in ret.comment, ret.raw

    # a new commit whose requirements pip cannot install
    new_commit(repo, "broken")
    sample.commit_file(
        repo, ENV, "config/requirements.pip",
        "--no-index\n--find-links wheels\nno-such-package-anywhere==9.9\n", "broken requirements",
    )  # fmt: skip
    ret = states.deployed(ENV)
    assert ret.result is False
    assert "pip install" in ret.comment and "no-such-package-anywhere" in ret.comment, ret.comment
    still_good()
    failed = os.listdir(root / "failed")
    assert len(failed) == 2, failed  # missing.pip and pip's failure, set aside
    # nothing marked the broken revision done: it is still wanted, not skipped
    ret = states.deployed(ENV, test=True)
    assert ret.result is None and ret.changes["revision"]["new"] == tip(repo), ret.raw


def test_broken_virtualenv_is_redeployed(states, vumi, base_dir, root):
    assert states.deployed(ENV).result is True
    (first,) = release_dirs(base_dir)
    sha = current_revision(vumi)
    venv = pathlib.Path(os.path.realpath(root / "releases" / first / "ve"))
    assert venv.parent == root / "shared" / "virtualenvs"
    marker = venv / ".vumi-complete"

    # each sign of a broken virtualenv is seen on its own (predicting is cheap)
    marker_text = marker.read_text()
    marker.unlink()
    ret = states.deployed(ENV, test=True)
    assert ret.result is None and "virtualenv is not intact" in ret.comment, ret.raw
    assert ret.changes["revision"] == {"old": sha, "new": sha}
    marker.write_text(marker_text)
    assert_unchanged(states.deployed(ENV, test=True))
    (venv / "bin" / "python").unlink()
    ret = states.deployed(ENV, test=True)
    assert ret.result is None and "virtualenv is not intact" in ret.comment, ret.raw
    assert release_dirs(base_dir) == [first]

    ret = states.deployed(ENV)
    assert ret.result is True, ret.comment
    second = release_dirs(base_dir)[-1]
    assert ret.changes == {
        "release": {"old": first, "new": second},
        "revision": {"old": sha, "new": sha},
    }
    assert vumi.current(ENV)["virtualenv_ok"] is True
    res = vumi.execute(ENV, "python -c 'import vumi_sample_lib'")
    assert res["retcode"] == 0, res
    assert_unchanged(states.deployed(ENV))


# --------------------------------------------------------------------------
# vumi.webapp_running / vumi.webapp_dead
# --------------------------------------------------------------------------


def program_file_path(vumi):
    """Where the environment's supervisor program file goes (``vumi.webapp_programs`` names it)."""
    settings = vumi.settings(ENV)
    return pathlib.Path(settings["supervisor"]["conf_dir"]) / f"{settings['app']}-{ENV}.conf"


def test_webapp_running_restarts_old_releases_and_webapp_dead_stops(states, vumi, repo, base_dir, free_port, webapps):
    ports = [free_port(), free_port()]
    webapps.extend((ENV, port) for port in ports)
    assert states.deployed(ENV).result is True
    (first,) = release_dirs(base_dir)
    first_sha = current_revision(vumi)

    ret = states.webapp_running(ENV, ports=ports, test=True)
    assert ret.result is None, ret.comment
    assert ret.changes == {str(p): {"old": "stopped", "new": "started"} for p in ports} | {
        "programs": {"old": None, "new": str(program_file_path(vumi))}
    }  # and the program file, to be written
    assert not program_file_path(vumi).exists()  # predicted, not written
    assert all(port_closed(p) for p in ports)

    ret = states.webapp_running(ENV, ports=ports)
    assert ret.result is True, ret.comment
    assert set(ret.changes) - {"programs"} == {str(p) for p in ports}
    pids = {}
    for port in ports:
        release, revision, pids[port] = serving(port)
        assert (release, revision) == (first, first_sha)
        assert ret.changes[str(port)]["old"] == "stopped"
        assert ret.changes[str(port)]["new"] == f"running release {first} (pid {pids[port]})"
    assert_unchanged(states.webapp_running(ENV, ports=ports))
    assert_unchanged(states.webapp_running(ENV, ports=ports, test=True))

    # a new release: deployed alone does not restart; the running ports lag behind
    second_sha = new_commit(repo, "second")
    assert states.deployed(ENV).result is True
    second = release_dirs(base_dir)[-1]
    assert [serving(p) for p in ports] == [(first, first_sha, pids[p]) for p in ports]

    ret = states.webapp_running(ENV, ports=ports, test=True)
    assert ret.result is None, ret.comment
    assert ret.changes == {
        str(p): {"old": f"running release {first} (pid {pids[p]})", "new": "restarted"} for p in ports
    }
    assert [serving(p) for p in ports] == [(first, first_sha, pids[p]) for p in ports]

    ret = states.webapp_running(ENV, ports=ports)
    assert ret.result is True, ret.comment
    for port in ports:
        release, revision, pid = serving(port)
        assert (release, revision) == (second, second_sha)
        assert pid != pids[port]
        assert ret.changes[str(port)] == {
            "old": f"running release {first} (pid {pids[port]})",
            "new": f"running release {second} (pid {pid})",
        }
    assert_unchanged(states.webapp_running(ENV, ports=ports))

    # a port some other process listens on: refused, and that process left alone
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        other = foreign.getsockname()[1]
        ret = states.webapp_running(ENV, ports=[other])
        assert ret.result is False and "already in use" in ret.comment, ret.raw
        assert ret.changes == {}
        assert_unchanged(states.webapp_dead(ENV, ports=[other]))
        with socket.create_connection(("127.0.0.1", other), timeout=2):
            pass

    ret = states.webapp_dead(ENV, ports=ports, test=True)
    assert ret.result is None, ret.comment
    assert set(ret.changes) == {str(p) for p in ports}
    assert all(serving(p)[0] == second for p in ports)

    ret = states.webapp_dead(ENV, ports=ports)
    assert ret.result is True, ret.comment
    assert all(ret.changes[str(p)]["new"] == "stopped" for p in ports), ret.changes
    assert all(port_closed(p) for p in ports)
    assert vumi.webapp_status(ENV, ports[0])[ports[0]]["running"] is False
    assert_unchanged(states.webapp_dead(ENV, ports=ports))
    assert_unchanged(states.webapp_dead(ENV, ports=ports, test=True))


# --------------------------------------------------------------------------
# The SLS, end to end
# --------------------------------------------------------------------------


def sls_pillar(vumi_config, ports, branch=ENV):
    pillar = {
        "vumi": {
            "base_dir": vumi_config["base_dir"],
            "repo_url": vumi_config["repo_url"],
            "user": getpass.getuser(),
            **{k: vumi_config[k] for k in ("user", "python", "cache_dir") if k in vumi_config},  # a deploy user's
            "environments": {ENV: {"ports": ports}},
        }
    }
    if branch:
        pillar["branch"] = branch
    return pillar


class Applied:
    """A state.apply of the SLS: its states by what they are."""

    def __init__(self, ret):
        self.states = list(ret)
        self.by_kind = {}  # by the end of the state id: vumi-<env>-settings / -ready / -layout / -deployed / -webapp
        for state in self.states:
            self.by_kind.setdefault(state.full_return["__id__"].rsplit("-", 1)[-1], []).append(state)
        assert set(self.by_kind) == {"settings", "ready", "layout", "deployed", "webapp", "cron"}, ret.raw
        for checked in ("settings", "ready"):  # they change nothing; the others follow them
            assert all(s.result is True and not s.changes for s in self.by_kind[checked]), ret.raw
        (self.deployed,) = self.by_kind["deployed"]
        (self.webapp,) = self.by_kind["webapp"]
        self.layout = self.by_kind["layout"]

    def comments(self):
        return {state.id: state.comment for state in self.states}


def test_sls_deploys_runs_and_follows_the_branch(loaders, vumi, repo, base_dir, vumi_config, free_port, webapps):
    ports = [free_port(), free_port()]
    webapps.extend((ENV, port) for port in ports)
    pillar = sls_pillar(vumi_config, ports)

    def apply(**kwargs):
        ret = loaders.modules.state.apply("vumi", pillar=pillar, **kwargs)
        assert not ret.errors, ret.errors
        return Applied(ret)

    # predicted, and nothing touched
    ret = apply(test=True)
    assert ret.deployed.result is None, ret.comments()
    assert ret.deployed.changes["revision"]["new"] == tip(repo)
    assert all(state.result is None for state in ret.layout), ret.comments()
    assert ret.webapp.result is None, ret.comments()
    assert snapshot(base_dir) == ({}, None)
    assert all(port_closed(p) for p in ports)

    ret = apply()
    assert all(state.result is True for state in ret.states), ret.comments()
    (first,) = release_dirs(base_dir)
    first_sha = tip(repo)
    assert ret.deployed.changes["release"] == {"old": None, "new": first}
    assert ret.deployed.changes["revision"] == {"old": None, "new": first_sha}
    assert set(ret.webapp.changes) == {str(p) for p in ports} | {"programs"}  # its program file, written
    pids = {}
    for port in ports:
        release, revision, pids[port] = serving(port)
        assert (release, revision) == (first, first_sha)

    # nothing to do: predicted so, and done so
    before = snapshot(base_dir)
    for test in (True, False):
        ret = apply(test=test)
        for state in ret.states:
            assert_unchanged(state)
    assert snapshot(base_dir) == before
    assert release_dirs(base_dir) == [first]
    assert [serving(p) for p in ports] == [(first, first_sha, pids[p]) for p in ports]

    # a new commit: predicted (deploy and restart) without touching anything
    second_sha = new_commit(repo, "second")
    ret = apply(test=True)
    assert ret.deployed.result is None, ret.comments()
    assert ret.deployed.changes["revision"] == {"old": first_sha, "new": second_sha}
    assert ret.webapp.result is None, ret.comments()  # mod_watch, predicting
    assert ret.webapp.changes == {
        str(p): {"old": f"running release {first} (pid {pids[p]})", "new": "restarted"} for p in ports
    }
    assert all(state.result is True and not state.changes for state in ret.layout), ret.comments()
    assert snapshot(base_dir) == before
    assert [serving(p) for p in ports] == [(first, first_sha, pids[p]) for p in ports]

    ret = apply()
    assert all(state.result is True for state in ret.states), ret.comments()
    second = release_dirs(base_dir)[-1]
    assert release_dirs(base_dir) == [first, second]
    assert ret.deployed.changes["revision"] == {"old": first_sha, "new": second_sha}
    for port in ports:
        release, revision, pid = serving(port)
        assert (release, revision) == (second, second_sha)
        assert pid != pids[port]
        assert ret.webapp.changes[str(port)]["new"] == f"running release {second} (pid {pid})"

    for state in apply().states:
        assert_unchanged(state)
    assert release_dirs(base_dir) == [first, second]

    # one port stopped, then a new commit: the dry run predicts exactly what the real run
    # then does (the stopped port started, the running one restarted: it runs the old release)
    stopped, running = ports
    vumi.stop_webapp(ENV, stopped, ports=ports)
    third_sha = new_commit(repo, "third")
    _, _, running_pid = serving(running)
    ret = apply(test=True)
    assert ret.webapp.changes == {
        str(stopped): {"old": "stopped", "new": "started"},
        str(running): {"old": f"running release {second} (pid {running_pid})", "new": "restarted"},
    }, ret.comments()
    ret = apply()
    assert all(state.result is True for state in ret.states), ret.comments()
    third = release_dirs(base_dir)[-1]
    assert set(ret.webapp.changes) == {str(stopped), str(running)}, ret.webapp.changes
    assert f"ports {stopped} started" in ret.webapp.comment and f"ports {running} restarted" in ret.webapp.comment
    assert all(serving(p)[:2] == (third, third_sha) for p in ports)
    second, second_sha = third, third_sha

    # a commit that cannot be deployed: the deploy fails, the webapp is left serving
    sample.commit_file(repo, ENV, "config/requirements.pip", "-r gone.pip\n", "include a missing file")
    ret = apply()
    assert ret.deployed.result is False
    assert "gone.pip not found" in ret.deployed.comment, ret.comments()
    assert ret.webapp.result is False and ret.webapp.changes == {}, ret.comments()
    assert release_dirs(base_dir)[-1] == second
    assert current_target(base_dir) == f"releases/{second}"
    assert all(serving(p)[:2] == (second, second_sha) for p in ports)


def test_a_deploy_whose_ports_cannot_be_restarted_does_not_switch(
    loaders, repo, base_dir, vumi_config, free_port, webapps, tmp_path
):
    ports = [free_port()]
    webapps.extend((ENV, port) for port in ports)
    pillar = sls_pillar(vumi_config, ports)
    ret = loaders.modules.state.apply("vumi", pillar=pillar)
    assert all(state.result is True for state in ret), ret.raw
    (first,) = release_dirs(base_dir)
    new_commit(repo, "second")
    # supervisord away (a wrong conf_file, a stopped daemon): the restart after the switch cannot happen
    away = tmp_path / "supervisord.conf"
    away.write_text(f"[unix_http_server]\nfile={tmp_path}/gone.sock\n")
    pillar["vumi"]["supervisor"] = {"conf_file": str(away)}
    states = {state.id: state for state in loaders.modules.state.apply("vumi", pillar=pillar)}
    # the pre-flight says why, before anything of the environment is touched
    ready = states[f"vumi-{ENV}-ready"]
    assert ready.result is False and not ready.changes, ready.raw
    assert ready.comment == (
        f"{ENV} cannot be deployed; nothing of it was made: supervisor: supervisord is not reachable on "
        f"{tmp_path}/gone.sock (from {away}): [Errno 2] No such file or directory; is it running?"
    ), ready.raw
    deployed = states[f"vumi-{ENV}-deployed"]
    assert deployed.result is False and not deployed.changes, deployed.raw
    # the deploy state alone (a custom SLS) checks the same before its switch
    alone = loaders.modules.state.single("vumi.deployed", ENV, supervised=True, pillar=pillar)
    assert alone.result is False and not alone.changes, alone.raw
    assert f"supervisord is not reachable on {tmp_path}/gone.sock" in alone.comment, alone.raw
    assert release_dirs(base_dir) == [first] and current_target(base_dir) == f"releases/{first}"
    assert serving(ports[0])[0] == first


def test_a_port_that_fails_after_the_switch_is_said_with_the_switch(
    loaders, repo, base_dir, vumi_config, free_port, webapps
):
    ports = [free_port(), free_port()]
    webapps.extend((ENV, port) for port in ports)
    pillar = sls_pillar(vumi_config, ports)
    assert all(state.result is True for state in loaders.modules.state.apply("vumi", pillar=pillar))
    # a release that answers the health check (on a spare port) but not on the first port
    wsgi = pathlib.Path(repo) / "sampleapp" / "wsgi.py"
    sample.git(repo, "checkout", "-q", ENV)
    broken = wsgi.read_text() + (
        f'\nimport os\nif os.environ.get("VUMI_PORT") == "{ports[0]}":\n    raise RuntimeError("not on this port")\n'
    )
    sha = sample.commit_file(repo, ENV, "sampleapp/wsgi.py", broken, "broken on one port")
    states = {state.id: state for state in loaders.modules.state.apply("vumi", pillar=pillar)}
    deployed, webapp = states[f"vumi-{ENV}-deployed"], states[f"vumi-{ENV}-webapp"]
    new = deployed.changes["release"]["new"]
    assert deployed.result is True and deployed.changes["revision"]["new"] == sha, deployed.raw
    assert webapp.result is False, webapp.raw
    assert webapp.comment.startswith(
        f"{ENV} switched to release {new} at {sha[:12]}; port {ports[0]} could not be restarted: "
    ), webapp.comment
    assert f"ports left as they were: {ports[1]}" in webapp.comment
    assert serving(ports[1])[:2] != (new, sha)  # the second port still serves the release before


def test_sls_without_a_usable_branch_says_so(loaders, vumi_config, base_dir):
    hint = """state.apply vumi pillar='{"branch": "staging"}'"""
    for test in (True, False):
        ret = loaders.modules.state.apply("vumi", pillar=sls_pillar(vumi_config, [], branch=None), test=test)
        (state,) = list(ret)
        assert state.result is False, state.raw
        assert hint in state.name, state.raw
        if not test:
            assert "Name the environment" in state.comment and hint in state.comment, state.raw

    # a branch that would escape the base dir: every state fails, the first says why
    # (the SLS renders from pillar alone; the module validates when the states run)
    ret = loaders.modules.state.apply("vumi", pillar=sls_pillar(vumi_config, [], branch="../etc"))
    assert not ret.errors and all(state.result is False for state in ret), ret.raw
    assert "invalid environment '../etc'" in list(ret)[0].comment, ret.raw
    assert snapshot(base_dir) == ({}, None)


def test_a_typo_in_pillar_fails_the_sls_before_anything_is_made(loaders, vumi_config, base_dir, tmp_path):
    said = "unknown key pillar vumi:requirments; did you mean requirements?"
    pillar = sls_pillar(vumi_config, [])
    pillar["vumi"]["requirments"] = "requirements.txt"  # one letter off
    for test in (True, False):
        ret = loaders.modules.state.apply("vumi", pillar=pillar, test=test)
        assert not ret.errors, ret.errors
        states = {state.id: state for state in ret}
        first = states[f"vumi-{ENV}-settings"]
        assert first.result is False and said in first.comment, first.raw
        assert not any(state.changes for state in ret), ret.raw
        assert all(state.result is False for state in ret), ret.raw  # failed hard: nothing else ran
    assert snapshot(base_dir) == ({}, None)
    # with nginx on, its SLS reads the settings as it renders: its site is a failing state
    # naming the key (no render error), and no site is written
    sites = tmp_path / "sites"
    sites.mkdir()
    pillar["vumi"]["nginx"] = {"enabled": True, "conf_dir": str(sites), "listen": "127.0.0.1:1",
                               "manage_package": False, "manage_service": False}  # fmt: skip
    ret = loaders.modules.state.apply("vumi", pillar=pillar)
    assert not ret.errors, ret.errors
    states = {state.id: state for state in ret}
    assert states[f"vumi-{ENV}-settings"].comment == said, ret.raw
    assert all(state.result is False and not state.changes for state in ret), ret.raw
    assert snapshot(base_dir) == ({}, None) and os.listdir(sites) == []
    # the module says the same, in vumi.settings and vumi.check
    for function in (loaders.modules.vumi.settings, loaders.modules.vumi.check):
        with pytest.raises(SaltInvocationError, match=re.escape(said)):
            function(ENV, vumi_pillar=pillar["vumi"])


def test_without_branch_every_environment_in_vumi_deploy_converges(loaders, repo, base_dir, vumi_config):
    """state.highstate's case: no pillar branch; the host's vumi:deploy names its environments."""
    pillar = sls_pillar(vumi_config, [], branch=None)
    pillar["vumi"]["deploy"] = [ENV, "production"]
    for test in (True, False):
        ret = loaders.modules.state.apply("vumi", pillar=pillar, test=test)
        assert not ret.errors, ret.errors
        ids = {state.full_return["__id__"]: state for state in ret}
        assert {
            f"vumi-{env}-{kind}"
            for env in (ENV, "production")
            for kind in ("settings", "ready", "layout", "deployed", "webapp", "cron")
        } == set(ids)
        assert all(state.result is not False for state in ids.values()), ret.raw
        if test:
            assert ids[f"vumi-{ENV}-deployed"].result is None and ids["vumi-production-deployed"].result is None
            assert snapshot(base_dir) == ({}, None)  # predicted, nothing made
    for env in (ENV, "production"):
        assert current_target(base_dir, env) == f"releases/{release_dirs(base_dir, env)[-1]}"
        assert loaders.modules.vumi.current(env)["revision"] == tip(repo, env)
    # again: nothing to do in either
    for state in loaders.modules.state.apply("vumi", pillar=pillar):
        assert_unchanged(state)


@pytest.mark.parametrize("deploy", ["staging", {"staging": True}, 5])
def test_a_vumi_deploy_that_is_not_a_list_is_refused_whole(loaders, vumi_config, base_dir, deploy):
    pillar = sls_pillar(vumi_config, [], branch=None)
    pillar["vumi"]["deploy"] = deploy
    (state,) = list(loaders.modules.state.apply("vumi", pillar=pillar))
    assert state.result is False and "must be a list of environment names" in state.comment, state.raw
    assert snapshot(base_dir) == ({}, None)  # a string is not split into s, t, a, ...


LOCAL_PACKAGE = """[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "vumi-local-lib"
version = "1.0"

[tool.setuptools]
packages = ["vumilocal"]
"""


def test_a_local_package_built_in_the_release_is_not_a_change(loaders, repo, base_dir, vumi_config, free_port, webapps):
    """
    Requirements that install ``./pkgs/local`` from the app's own tree: the build writes
    setuptools' leftovers into the release, and a second apply must still find nothing to do.
    """
    port = free_port()
    webapps.append((ENV, port))
    pillar = sls_pillar(vumi_config, [port])
    sample.git(repo, "checkout", "-q", ENV)
    requirements = (repo / "config" / "requirements.pip").read_text()
    sample.commit_file(repo, ENV, "pkgs/local/pyproject.toml", LOCAL_PACKAGE, "a package of the app's own")
    sample.commit_file(repo, ENV, "pkgs/local/vumilocal/__init__.py", "VALUE = 1\n", "its code")
    sample.commit_file(repo, ENV, "config/requirements.pip", requirements + "./pkgs/local\n", "installed from the tree")

    def apply():
        ret = loaders.modules.state.apply("vumi", pillar=pillar)
        assert not ret.errors and all(state.result is True for state in ret), ret.raw
        return {state.id: state.changes for state in ret if state.changes}

    assert f"vumi-{ENV}-deployed" in apply()
    (release,) = release_dirs(base_dir)
    package = env_root(base_dir, ENV) / "releases" / release / "vumi" / "pkgs" / "local"
    untracked = sorted(p.name for p in package.iterdir() if p.name not in ("pyproject.toml", "vumilocal"))
    assert untracked, "the build left nothing in the tree: this test would prove nothing"
    assert apply() == {}  # nothing new: no release, no restart
    assert release_dirs(base_dir) == [release]

    def venv_of(name):
        return os.path.realpath(env_root(base_dir, ENV) / "releases" / name / "ve")

    # a code change elsewhere reuses the virtualenv; a change of the package's code builds one
    sample.commit_file(repo, ENV, "NEWS", "elsewhere\n", "a code change")
    assert f"vumi-{ENV}-deployed" in apply()
    second = release_dirs(base_dir)[-1]
    assert second != release and venv_of(second) == venv_of(release)
    sample.commit_file(repo, ENV, "pkgs/local/vumilocal/__init__.py", "VALUE = 2\n", "its code, changed")
    assert f"vumi-{ENV}-deployed" in apply()
    third = release_dirs(base_dir)[-1]
    assert third != second and venv_of(third) != venv_of(second)
