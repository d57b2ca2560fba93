"""
The bad-input catalogue: hostile values through the execution
module and the states, and symlinks planted in the layout pointing outside it.

Every case must get a clear error (SaltInvocationError / CommandExecutionError
naming the problem, or a state with ``result: False`` saying it), write
nothing outside the environment's folder (a sibling folder of victims, the
upstream repo and the working folder, where a shell injection would drop its
file, are compared before and after, modes and owners included), and leave
``current`` as it was.

One environment is deployed for the module (a real virtualenv) and the cases
run against it; planted symlinks are removed again after each case.
"""

import os
import pathlib
import shutil
import socket
import types

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import make_repo as sample  # tests/conftest.py puts sample/ on sys.path
from support import failures
from support.failures import (
    ModuleLoaders,
    Tally,
    base_settings,
    clone_origin,
    current_problem,
    current_state,
    kill_processes_under,
    snapshot,
)
from support.helpers import env_root, sls_pillar

ENV = "staging"
TALLY = Tally()
HUGE = list(range(1, 100001))
EVIL_BRANCHES = {"evil1": {"branch": "../../outside"}, "evil2": {"branch": "/etc"}, "evil3": {"branch": "-rf"}}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    calls = {"module": 0, "state": 0}
    for case in CASES:
        calls["module"] += len(case.module)
        calls["state"] += len(case.state)
    print(f"\n[issue5] hostile inputs: {len(CASES)} inputs, {calls['module']} execution-module calls, "
          f"{calls['state']} state calls (the SLS included)")  # fmt: skip
    print(TALLY.report())


@pytest.fixture(scope="module")
def target(minion_opts, origin, tmp_path_factory, supervisord):
    """``staging`` deployed once; a folder of victims beside it; a commit it has not deployed yet."""
    failures.SUPERVISOR.update(supervisord.settings())
    top = tmp_path_factory.mktemp("hostile")
    loaders = ModuleLoaders(minion_opts, top)
    repo = clone_origin(origin, top / "upstream")
    base_dir = top / "srv"
    base_dir.mkdir()
    # a branch comes from pillar (the first argument of every function is the environment)
    loaders.use(base_settings(base_dir, repo, health_check=True, environments=EVIL_BRANCHES))
    try:
        result = loaders.vumi.deploy(ENV)
        # the states then always want to deploy: a planted link must stop a real attempt
        sample.commit_file(repo, ENV, "NEWS", "not deployed yet\n", "Newer")
        outside = top / "outside"
        (outside / "victim-dir").mkdir(parents=True)
        (outside / "victim-dir" / "keep.txt").write_text("mine\n")
        os.chmod(outside / "victim-dir", 0o700)  # a file.directory following a link would make it 0755
        (outside / "victim-file").write_text("do not append here\n")
        (top / "cwd").mkdir()
        yield types.SimpleNamespace(
            loaders=loaders,
            vumi=loaders.vumi,
            states=loaders.states,
            state=loaders.loaders.modules.state,
            top=top,
            root=env_root(base_dir, ENV),
            outside=outside,
            release=result["release"],
        )
    finally:
        kill_processes_under(base_dir)
        loaders.close()


# --------------------------------------------------------------------------
# The catalogue: (what, module calls, state calls, the text the error must name)
# --------------------------------------------------------------------------


def case(what, named, module=(), state=(), plant=None, sls=False):
    return types.SimpleNamespace(what=what, named=named, module=list(module), state=list(state), plant=plant, sls=sls)


def _port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(t, port=None, **kwargs):
    """start_webapp on a port configured for the call (an unconfigured one is refused first)."""
    port = port or _port()
    return t.vumi.start_webapp(ENV, port, ports=[port], **kwargs)


def names(bad, named=None):
    """A hostile environment name through the functions that take one, and the states."""
    named = named or repr(bad)
    return case(
        f"environment {bad!r}"[:80], named,
        module=[lambda t: t.vumi.deploy(bad), lambda t: t.vumi.layout(bad), lambda t: t.vumi.rollback(bad),
                lambda t: t.vumi.execute(bad, "true"), lambda t: t.vumi.start_webapp(bad, 8000, ports=[8000])],
        state=[lambda t: t.states.deployed(bad), lambda t: t.states.webapp_running(bad, ports=[_port()])],
    )  # fmt: skip


def setting(key, bad, named=None):
    """A hostile setting given as a keyword argument (as pillar would give it)."""
    named = named or repr(bad)
    return case(
        f"setting {key}={bad!r}"[:80], named,
        module=[lambda t: t.vumi.deploy(ENV, **{key: bad}), lambda t: t.vumi.layout(ENV, **{key: bad})],
        state=[lambda t: t.states.deployed(ENV, **{key: bad})],
    )  # fmt: skip


def branch(env):
    bad = EVIL_BRANCHES[env]["branch"]
    return case(
        f"pillar branch {bad!r} (environment {env})", f"branch {bad!r}",
        module=[lambda t: t.vumi.deploy(env), lambda t: t.vumi.layout(env), lambda t: t.vumi.remote_revision(env)],
        state=[lambda t: t.states.deployed(env)],
    )  # fmt: skip


def port(bad, named=None):
    named = named or repr(bad)
    return case(
        f"port {bad!r}", named,
        module=[lambda t: t.vumi.start_webapp(ENV, bad), lambda t: t.vumi.stop_webapp(ENV, bad),
                lambda t: t.vumi.restart_webapp(ENV, bad), lambda t: t.vumi.start_webapp_cluster(ENV, bad),
                lambda t: t.vumi.webapp_status(ENV, bad)],
        state=[lambda t: t.states.webapp_running(ENV, ports=[bad]), lambda t: t.states.webapp_dead(ENV, ports=[bad])],
    )  # fmt: skip


def release(bad, named=None):
    named = named or repr(bad)
    return case(
        f"release {bad!r}", named,
        module=[lambda t: t.vumi.rollback(ENV, bad), lambda t: t.vumi.publish(ENV, bad),
                lambda t: t.vumi.execute(ENV, "true", release=bad), lambda t: t.vumi.create_virtualenv(ENV, release=bad)]
        # discard of a release that is not there is no error (the fleet discards everywhere): malformed names are
        + ([] if bad.isascii() and bad.replace("_", "").isdigit() else [lambda t: t.vumi.discard(ENV, bad)]),
    )  # fmt: skip


def _link_instead(relpath, to="victim-dir"):
    """Replace a folder or file of the tree by a symlink to the victim outside it."""

    def plant(t):
        path = t.root / relpath
        aside = path.with_name(path.name + ".aside")
        existed = os.path.lexists(path)
        if existed:
            path.rename(aside)
        path.symlink_to(t.outside / to)

        def undo():
            path.unlink()
            if existed:
                aside.rename(path)

        return undo

    return plant


def _current_is_a_directory(t):
    link = t.root / "current"
    aside = t.root / "current.aside"
    link.rename(aside)
    link.mkdir()
    (link / "planted.txt").write_text("x\n")

    def undo():
        shutil.rmtree(link)
        aside.rename(link)

    return undo


def _current_points_outside(t):
    link = t.root / "current"
    target = os.readlink(link)
    link.unlink()
    link.symlink_to(t.outside / "victim-dir")

    def undo():
        link.unlink()
        link.symlink_to(target)

    return undo


def planted(relpath, named="is a symlink; refusing", to="victim-dir", plant=None, what=None):
    """A symlink planted in the tree: every function and state that would write through it refuses."""
    return case(
        what or f"{relpath} planted as a symlink to outside", named,
        module=[lambda t: t.vumi.deploy(ENV), lambda t: t.vumi.layout(ENV), lambda t: t.vumi.cleanup(ENV),
                _start, lambda t: t.vumi.create_virtualenv(ENV)],
        state=[lambda t: t.states.deployed(ENV)],
        plant=plant or _link_instead(relpath, to), sls=True,
    )  # fmt: skip


CASES = [
    # names that would escape the base dir, reach a shell or git's options
    names("../../outside"),
    names("/etc/passwd"),
    names("staging/../../outside"),
    names("$(touch pwned)"),
    names("staging;touch pwned"),
    names("`touch pwned`"),
    names("stag\ning"),
    names("stag\x00ing"),
    names("-rf"),
    names("--upload-pack=touch pwned"),
    names("x" * 5000),
    branch("evil1"),
    branch("evil2"),
    branch("evil3"),
    setting("app", "../outside"),
    setting("base_dir", "relative/srv"),
    setting("revision", "HEAD;touch pwned"),
    setting("revision", "--upload-pack=touch pwned"),
    setting("requirements", "../../../etc/passwd"),
    setting("repo_url", "--upload-pack=touch pwned"),
    setting("health_path", "/health; touch pwned"),
    setting("health_path", "http://evil.example/"),
    setting("health_timeout", "nan", "invalid health_timeout nan"),
    setting("lock_timeout", -1),
    setting("ports", HUGE, "too many ports (100000)"),
    setting("keep_releases", 0, "keep_releases 0"),
    setting("colour", "blue", "unknown argument colour"),
    # hard input: values YAML or a hurried operator gives, each refused whole
    setting("revision", 1.1, "invalid revision 1.1: must be text"),  # revision: 1.10 in YAML
    setting("revision", 20261201, "invalid revision 20261201: must be text"),
    setting("shared_dirs", "static", "invalid shared_dirs 'static'"),  # not s, t, a, t, i, c
    setting("shared_dirs", None, "invalid shared_dirs None"),
    setting("shared_dirs", ["../outside"], "invalid shared dir '../outside'"),
    setting("settings_path", "{0}.py", "invalid settings_path '{0}.py'"),
    setting("settings_path", "{nope}.py", "invalid settings_path '{nope}.py'"),
    setting("user", 1000, "invalid user 1000"),
    setting("user", "", "invalid user ''"),
    setting("user", None, "invalid user None"),
    setting("user", " root", "invalid user ' root'"),
    setting("base_dir", "//", "invalid base_dir '//'"),
    setting("base_dir", "///", "invalid base_dir '///'"),
    setting("reuse_virtualenvs", "false", "invalid reuse_virtualenvs 'false'"),
    setting("events", "no", "invalid events 'no'"),
    setting("health_check", "false", "invalid health_check 'false'"),
    setting("stop_signal", "SIGSTOP", "invalid stop_signal SIGSTOP"),
    setting("stop_signal", "cont", "invalid stop_signal SIGCONT"),
    setting("keep_releases", -3, "keep_releases -3"),
    setting("keep_failed", 0, "keep_failed 0"),
    setting("installer", "conda", "invalid installer 'conda'"),
    setting("pip_packages", "psycopg2-binary", "invalid pip_packages 'psycopg2-binary'"),
    setting("env", {"BAD-NAME": "x"}, "invalid env key 'BAD-NAME'"),
    setting("hooks", {"before_publish": [7]}, "invalid hooks:before_publish entry 7"),
    # ports
    port(0),
    port(65536),
    port(-1),
    port("8000; rm -rf /"),
    port("abc"),
    port(True),
    port(8000.5),
    port("8000\n8001"),
    case(
        "100000 ports",
        "too many ports (100000)",
        module=[lambda t: t.vumi.start_webapp_cluster(ENV, *HUGE), lambda t: t.vumi.stop_webapp_cluster(ENV, HUGE)],
        state=[lambda t: t.states.webapp_running(ENV, ports=HUGE)],
    ),  # fmt: skip
    # releases
    release("../../outside"),
    release("/tmp"),
    release("20000101_000000"),
    release("20000101_000000/../.."),
    case("cleanup limit '1; rm -rf /'", "'1; rm -rf /'", module=[lambda t: t.vumi.cleanup(ENV, limit="1; rm -rf /")]),
    case("a NUL in a command", "invalid command", module=[lambda t: t.vumi.execute(ENV, "true\x00rm -rf /")]),
    case(
        "webapp_command with an unknown field",
        "invalid webapp_command",
        module=[lambda t: _start(t, webapp_command="{nope} {port}")],
        state=[lambda t: t.states.webapp_running(ENV, ports=[_port()], webapp_command="{nope} {port}")],
    ),  # fmt: skip
    # symlinks planted in the layout, pointing outside it
    planted("releases"),
    planted("shared"),
    planted("shared/logs"),
    planted("shared/tmp/pids"),
    planted("shared/repositories"),
    planted("shared/repositories/vumi"),
    planted("shared/virtualenvs"),
    planted("failed"),
    planted("history.log", to="victim-file"),
    planted(".deploy.lock", to="victim-file"),
    planted(
        "current",
        "is a directory, not a symlink",
        plant=_current_is_a_directory,
        what="current replaced by a directory",
    ),
    planted(
        "current",
        "points outside the releases",
        plant=_current_points_outside,
        what="current pointing outside (absolute link)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.what.encode("unicode_escape").decode()[:60] for c in CASES])
def test_hostile_input_gets_a_clear_error_and_touches_nothing(target, case, monkeypatch):
    monkeypatch.chdir(target.top / "cwd")  # where a shell injection would drop its file
    target.port = _port()
    skip = [target.root, target.top / "salt-cache"]
    before_current = current_state(target.root)
    undo = case.plant(target) if case.plant else None
    outside = snapshot(target.top, skip=skip)
    outcomes = []
    try:
        for call in case.module:
            try:
                result = call(target)
            except (SaltInvocationError, CommandExecutionError) as exc:
                outcomes.append(("module", case.named in str(exc), str(exc)[:300]))
            else:
                outcomes.append(("module", False, f"no error: {result!r}"[:300]))
        for call in case.state:
            ret = call(target)
            outcomes.append(("state", ret.result is False and case.named in ret.comment, ret.comment[:300]))
        if case.sls:
            ret = target.state.apply("vumi", pillar=sls_pillar(target.loaders.settings["supervisor"], branch=ENV))
            failed = [s.comment for s in ret if s.result is False]
            outcomes.append(("sls", not ret.errors and any(case.named in c for c in failed),
                             "; ".join(failed)[:300] or str(ret.errors)))  # fmt: skip
        untouched = snapshot(target.top, skip=skip) == outside
    finally:
        if undo:
            undo()
    same_current = current_state(target.root) == before_current and current_problem(target.root) is None
    TALLY.add("hostile inputs", same_current and untouched, None)
    unclear = [o for o in outcomes if not o[1]]
    assert unclear == [], unclear
    assert untouched, "something outside the environment changed"
    assert same_current, current_state(target.root)
    assert os.readlink(target.root / "current") == f"releases/{target.release}"
    assert sorted(os.listdir(target.top / "cwd")) == []
    assert (target.outside / "victim-file").read_text() == "do not append here\n"
    assert oct((target.outside / "victim-dir").stat().st_mode & 0o777) == oct(0o700)


def test_the_module_still_works_after_the_catalogue(target):
    """The environment the catalogue ran against is intact: it deploys, and runs."""
    result = target.vumi.deploy(ENV)
    assert current_problem(target.root) is None
    assert os.readlink(target.root / "current") == f"releases/{result['release']}"
    assert pathlib.Path(target.root / "releases" / target.release / "release.json").is_file()
