"""
Functional tests of per-environment settings and ``vumi.managepy``.

Pillar ``settings`` (a mapping) is rendered into every release as a Python
settings file, ``environments/<env>.py`` in the code folder by default, mode
0640. The sample app reads it: ``manage.py showsettings`` prints the settings
module and its ``GREETING``, and the webapp's ``GET /`` answers with them.

Decided (and documented in README): a change of the settings alone in pillar
makes ``vumi.deployed`` cut a NEW release (same revision, new settings file), so
the change is atomic, recorded, and undone by ``vumi.rollback``; the webapp
state restarts the ports onto it like after any deploy.

Everything is real: the sample repository, the virtualenvs, the webapp on a free
loopback port. The settings come from a pillar tree of the test's own (the
bundle's pillar files plus an override pointing at tmp), never /var/praekelt.
"""

import datetime
import getpass
import json
import os
import pwd
import stat

import pytest
from salt.exceptions import SaltInvocationError

import make_repo as sample  # on sys.path thanks to tests/conftest.py
from support.helpers import answer, env_root, loaders_for, pillar_tree, release_dirs, write_override

ENV = "staging"
SETTINGS = {
    "GREETING": "hello from pillar",
    "SECRET_KEY": "not-in-the-repo-4e1f",
    "FEATURES": {"sms": True, "ussd": False},
    "ALLOWED_HOSTS": ["127.0.0.1", "localhost"],
}


# --------------------------------------------------------------------------
# Fixtures: a pillar tree of our own, rewritten by the tests
# --------------------------------------------------------------------------


@pytest.fixture
def pillar_dir(tmp_path):
    return pillar_tree(tmp_path / "pillar")


def write_pillar(pillar_dir, vumi_config, settings=None, **env_extra):
    """The override file: this test's base_dir, repo and user; ``settings`` for staging."""
    staging = {"ports": [], **env_extra}
    if settings is not None:
        staging["settings"] = settings
    ours = dict(
        {"user": getpass.getuser()},  # unless the environments are a deploy user's
        **vumi_config,
        settings_extends="environments.default",  # the repo's defaults under pillar's values
        environments={"staging": staging, "production": {"ports": []}},
    )
    write_override(pillar_dir, ours)


@pytest.fixture
def loaders(minion_opts, vumi_config, pillar_dir):
    """Overrides conftest's: the minion with our pillar tree (settings read from it)."""
    write_pillar(pillar_dir, vumi_config, SETTINGS)
    with loaders_for(minion_opts, vumi_config, pillar_dir) as loaders:
        cfg = loaders.modules.vumi.settings(ENV, show_secrets=True)
        assert cfg["base_dir"] == vumi_config["base_dir"] and cfg["settings"] == SETTINGS, cfg
        # shown to whoever asks for the settings: everything but the secrets
        shown = loaders.modules.vumi.settings(ENV)
        assert shown["settings"] == dict(SETTINGS, SECRET_KEY="**********"), shown
        yield loaders


@pytest.fixture
def states(loaders):
    return loaders.states.vumi


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def settings_file(base_dir, release=None, relpath=f"environments/{ENV}.py"):
    root = env_root(base_dir, ENV)
    folder = root / "releases" / release if release else root / "current"
    return folder / "vumi" / relpath


def showsettings(vumi, **kwargs):
    res = vumi.managepy(ENV, "showsettings", **kwargs)
    assert res["retcode"] == 0, res
    return json.loads(res["stdout"])


def serving(port):
    return answer(port)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_settings_rendered_from_pillar_private_and_used(states, vumi, vumi_config, base_dir, free_port, webapps):
    ret = states.deployed(ENV)
    assert ret.result is True, ret.comment
    (release,) = release_dirs(base_dir)
    path = settings_file(base_dir, release)

    # the file: pillar's values, valid Python, readable by its owner and group only
    text = path.read_text()
    assert "GREETING = 'hello from pillar'\n" in text
    assert "SECRET_KEY = 'not-in-the-repo-4e1f'\n" in text
    assert "from environments.default import *" in text
    namespace = {}
    exec(compile(text.replace("from environments.default import *", ""), str(path), "exec"), namespace)  # noqa: S102
    assert {k: namespace[k] for k in SETTINGS} == SETTINGS
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640, oct(info.st_mode)
    assert not info.st_mode & stat.S_IROTH
    assert info.st_uid == pwd.getpwnam(vumi_config.get("user", getpass.getuser())).pw_uid
    # the secret lives in that one file: not in the manifest, history or the result
    manifest = (env_root(base_dir, ENV) / "releases" / release / "release.json").read_text()
    assert json.loads(manifest)["settings_hash"] and "not-in-the-repo" not in manifest
    assert "not-in-the-repo" not in (env_root(base_dir, ENV) / "history.log").read_text()
    assert vumi.current(ENV)["settings_changed"] is False

    # manage.py runs with it (and with what it extends: syncdb finds DATABASE)
    assert showsettings(vumi) == {"settings": "environments.staging", "greeting": "hello from pillar"}
    res = vumi.managepy(ENV, "syncdb")
    assert res["retcode"] == 0 and "Applying pages.0001_initial... OK" in res["stdout"], res

    # and so does the webapp: {settings} of the command line is the same module
    port = free_port()
    webapps.append((ENV, port))
    vumi.start_webapp(ENV, port, ports=[port])
    body = serving(port)
    assert (body["greeting"], body["settings"], body["release"]) == (
        "hello from pillar", "environments.staging", release,
    )  # fmt: skip


def test_settings_change_redeploys_and_reaches_the_webapp(
    loaders, pillar_dir, vumi_config, base_dir, repo, free_port, webapps
):
    port = free_port()
    webapps.append((ENV, port))

    def apply(greeting, test=False):
        """``state.apply vumi`` after the pillar file's GREETING was edited (pillar re-read)."""
        write_pillar(pillar_dir, vumi_config, dict(SETTINGS, GREETING=greeting), ports=[port])
        loaders.reload_all()
        ret = loaders.modules.state.apply("vumi", pillar={"branch": ENV}, test=test)
        assert not ret.errors, ret.errors
        return {state.full_return["__id__"]: state for state in ret}

    ret = apply("hello one")
    deployed, webapp = ret[f"vumi-{ENV}-deployed"], ret[f"vumi-{ENV}-webapp"]
    assert deployed.result is True and webapp.result is True, (deployed.comment, webapp.comment)
    (first,) = release_dirs(base_dir)
    body = serving(port)
    assert (body["greeting"], body["release"]) == ("hello one", first)
    revision, pid = body["revision"], body["ppid"]

    # unchanged settings: nothing to do, no release, no restart
    for test in (True, False):
        for state in apply("hello one", test=test).values():
            assert state.result is True and state.changes == {}, (state.id, state.comment)
    assert release_dirs(base_dir) == [first]
    assert serving(port)["ppid"] == pid

    # one setting changed: predicted, then a new release of the same revision
    ret = apply("hello two", test=True)
    deployed = ret[f"vumi-{ENV}-deployed"]
    assert deployed.result is None and "the settings in pillar changed" in deployed.comment, deployed.comment
    assert release_dirs(base_dir) == [first] and serving(port)["greeting"] == "hello one"

    ret = apply("hello two")
    deployed, webapp = ret[f"vumi-{ENV}-deployed"], ret[f"vumi-{ENV}-webapp"]
    assert deployed.result is True, deployed.comment
    second = release_dirs(base_dir)[-1]
    assert release_dirs(base_dir) == [first, second]
    assert deployed.changes == {
        "release": {"old": first, "new": second},
        "revision": {"old": revision, "new": revision},
    }
    assert webapp.result is True and str(port) in webapp.changes, webapp.comment
    body = serving(port)
    assert (body["greeting"], body["release"], body["revision"]) == ("hello two", second, revision)
    assert body["ppid"] != pid
    # the old release keeps its own settings: a rollback brings them back with it
    assert "hello one" in settings_file(base_dir, first).read_text()

    for state in apply("hello two").values():
        assert state.result is True and state.changes == {}, (state.id, state.comment)
    assert release_dirs(base_dir) == [first, second]


def test_bad_settings_are_rejected(states, vumi, base_dir):
    for key in ("a b", "x;rm", "1abc", "GREETING=1"):
        with pytest.raises(SaltInvocationError, match="invalid settings key"):
            vumi.settings(ENV, settings={key: "v"})
        ret = states.deployed(ENV, settings={key: "v"})
        assert ret.result is False and "invalid settings key" in ret.comment, ret.comment
    # values must be plain data the file can hold (a YAML date, NaN: refused, named)
    for value in (datetime.date(2026, 1, 1), {"nested": [float("nan")]}, object()):
        with pytest.raises(SaltInvocationError, match="invalid settings value WHEN"):
            vumi.settings(ENV, settings={"WHEN": value})
        ret = states.deployed(ENV, settings={"WHEN": value})
        assert ret.result is False and "invalid settings value" in ret.comment, ret.comment
    with pytest.raises(SaltInvocationError, match="must be a mapping"):
        vumi.settings(ENV, settings="GREETING = 'x'")
    for path in ("../escape.py", "/etc/vumi.py", "environments/../../x.py"):
        with pytest.raises(SaltInvocationError, match="settings_path"):
            vumi.settings(ENV, settings_path=path)
    with pytest.raises(SaltInvocationError, match="settings_extends"):
        vumi.settings(ENV, settings_extends="os; import x")
    assert release_dirs(base_dir) == []


def test_managepy_does_not_run_a_shell_and_paths_are_configurable(states, vumi, base_dir, tmp_path, free_port, webapps):
    assert states.deployed(ENV).result is True
    marker = tmp_path / "touched"

    # the ';' reaches manage.py as part of an argument: no command is, no shell runs
    res = vumi.managepy(ENV, f"showsettings; touch {marker}")
    assert res["retcode"] != 0, res
    assert "Unknown command: 'showsettings;'" in res["stderr"], res
    for line in (f"showsettings && touch {marker}", f"showsettings $(touch {marker})",
                 f"showsettings `touch {marker}`", f"showsettings | touch {marker}"):  # fmt: skip
        res = vumi.managepy(ENV, line)
        assert res["retcode"] != 0, (line, res)
    assert not marker.exists()

    # quoting is the user's own: a quoted word stays one argument
    res = vumi.managepy(ENV, "'show settings'")
    assert res["retcode"] != 0 and "Unknown command: 'show settings'" in res["stderr"], res
    with pytest.raises(SaltInvocationError, match="invalid manage.py command"):
        vumi.managepy(ENV, "showsettings 'unclosed")
    # --settings is the configured module (overridable like any setting)
    assert showsettings(vumi)["settings"] == "environments.staging"
    assert showsettings(vumi, settings_module="environments.production") == {
        "settings": "environments.production",
        "greeting": "hello from production",
    }

    # the file's path and module are settings too: a new release (the venv is reused)
    custom = {"settings_path": "local_settings/{env}_live.py", "settings_module": "local_settings.{env}_live"}
    ret = states.deployed(ENV, **custom)
    assert ret.result is True and "the settings in pillar changed" in ret.comment, ret.comment
    path = settings_file(base_dir, relpath="local_settings/staging_live.py")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert showsettings(vumi, **custom) == {"settings": "local_settings.staging_live", "greeting": "hello from pillar"}
    # the repo's own environments/staging.py is left as it is
    assert "hello from staging" in settings_file(base_dir).read_text()
    port = free_port()
    webapps.append((ENV, port))
    vumi.start_webapp(ENV, port, ports=[port], **custom)
    assert serving(port)["settings"] == "local_settings.staging_live"
    assert serving(port)["greeting"] == "hello from pillar"
    # idempotent with these settings too
    ret = states.deployed(ENV, **custom)
    assert ret.result is True and ret.changes == {}, ret.comment
    assert os.path.isfile(path)


def test_update_keeps_pillars_settings_over_the_repos_file(states, vumi, repo, base_dir):
    assert states.deployed(ENV).result is True
    (release,) = release_dirs(base_dir)
    # upstream changes the very file the settings are written over
    sample.commit_file(repo, ENV, f"environments/{ENV}.py", "GREETING = 'from upstream'\n", "new greeting")
    res = vumi.update(ENV)
    assert res["changed"] is True and res["previous"] == release, res
    assert showsettings(vumi)["greeting"] == "hello from pillar"
    path = settings_file(base_dir, res["release"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert vumi.current(ENV)["settings_changed"] is False
    assert states.deployed(ENV).changes == {}
