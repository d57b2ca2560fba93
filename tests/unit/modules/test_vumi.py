"""
Settings and argument validation of the ``vumi`` execution module.

No repositories, virtualenvs or processes: only ``vumi.settings``,
``vumi.paths`` and ``vumi.env_dirname`` and the validation every public
function does before it touches the disk. The module is loaded by Salt's
loader with a real pillar compiled from a temporary ``pillar_roots``, so the
precedence tested here (minion options < pillar ``vumi`` < pillar
``vumi:environments:<env>`` < keyword arguments) is Salt's own.
"""

import getpass
import json
import os
import textwrap

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

from support.helpers import loaders_for

#: env/branch names that must never reach the disk or a shell
BAD_NAMES = [
    "..",
    "../etc",
    "staging/../../etc",
    "/etc/passwd",
    "/staging",
    "staging/",
    "stag ing",
    " staging",
    "staging\t",
    "stag\x00ing",
    "stag\ning",
    "staging;touch pwned",
    "$(touch pwned)",
    "`touch pwned`",
    "staging|cat",
    "staging&",
    "staging&&id",
    "-rf",
    "--upload-pack=touch pwned",
    "staging.lock",
    "staging.",
    "topics//foo",
    "a~b",
    "",
]


#: ``vumi:environments:<env>:branch`` values; "" is not here: it means "the environment's name"
BAD_BRANCHES = [n for n in BAD_NAMES if n]


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory):
    return tmp_path_factory.mktemp("vumi-unit")


@pytest.fixture(scope="module")
def unit_pillar(unit_root):
    """A pillar tree the way an operator writes it: defaults plus one file per environment."""
    pillar = unit_root / "pillar"
    pillar.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - vumi\n")
    (pillar / "vumi.sls").write_text(
        textwrap.dedent(
            f"""\
            vumi:
              base_dir: {unit_root / "from-pillar"}
              repo_url: /srv/git/app.git
              keep_releases: 3
              ports: [8000]
              environments:
                production:
                  branch: prod-branch
                  ports: [9000, 9001]
                  revision: v1.2
                topics/foo:
                  keep_releases: 2
            """
        )
        # JSON strings are YAML: escapes carry NUL and newline into pillar intact
        + "".join(f"    badbranch{i}:\n      branch: {json.dumps(bad)}\n" for i, bad in enumerate(BAD_BRANCHES))
    )
    return pillar


@pytest.fixture(scope="module")
def vumi(minion_opts, unit_root, unit_pillar):
    # minion options are the lowest layer: pillar overrides them
    opts_vumi = {
        "base_dir": str(unit_root / "from-opts"),
        "app": "myapp",
        "keep_failed": 7,
        "user": getpass.getuser(),
    }
    with loaders_for(minion_opts, opts_vumi, unit_pillar) as loaders:
        yield loaders.modules.vumi


def test_defaults_opts_pillar_environment_kwargs_precedence(vumi, unit_root):
    cfg = vumi.settings("staging")
    assert cfg["environment"] == "staging"
    assert cfg["branch"] == "staging"  # defaults to the environment's name
    assert cfg["base_dir"] == str(unit_root / "from-pillar")  # pillar beats opts
    assert cfg["app"] == "myapp"  # from opts, pillar is silent
    assert cfg["keep_failed"] == 7
    assert cfg["keep_releases"] == 3
    assert cfg["requirements"] is None  # built-in default: found in the code
    assert cfg["ports"] == [8000]
    assert cfg["revision"] is None

    prod = vumi.settings("production")
    assert prod["branch"] == "prod-branch"
    assert prod["ports"] == [9000, 9001]
    assert prod["revision"] == "v1.2"
    assert prod["keep_releases"] == 3

    assert vumi.settings("topics/foo")["keep_releases"] == 2

    over = vumi.settings("production", keep_releases=9, ports="7000,7001", revision="abc123")
    assert (over["branch"], over["keep_releases"], over["ports"]) == ("prod-branch", 9, [7000, 7001])
    assert over["revision"] == "abc123"


def test_settings_do_not_leak_between_calls(vumi):
    vumi.settings("production", ports=[1234], revision="abc")
    cfg = vumi.settings("production")
    assert cfg["ports"] == [9000, 9001]
    assert cfg["revision"] == "v1.2"


def test_unknown_setting_is_named(vumi):
    with pytest.raises(SaltInvocationError, match="unknown argument repo_ulr; did you mean repo_url"):
        vumi.settings("staging", repo_ulr="x")
    # in pillar, Salt's own (compiled from the test's pillar_roots), wherever it is
    pillar = {"environments": {"staging": {"keep_release": 3}}}
    with pytest.raises(
        SaltInvocationError,
        match="unknown key pillar vumi:environments:staging:keep_release; did you mean keep_releases",
    ):
        vumi.settings("staging", vumi_pillar=pillar)


@pytest.mark.parametrize(
    "env, dirname",
    [("staging", "staging"), ("topics/foo", "topics~foo"), ("a/b/c", "a~b~c"), ("v1.2_x-y", "v1.2_x-y")],
)
def test_env_dirname_is_one_reversible_folder(vumi, env, dirname):
    assert vumi.env_dirname(env) == dirname
    assert "/" not in dirname
    assert dirname.replace("~", "/") == env


def test_paths_stay_inside_the_environment(vumi, unit_root):
    p = vumi.paths("topics/foo")
    root = str(unit_root / "from-pillar" / "myapp" / "topics~foo")
    assert p["root"] == root
    assert p["current"] == os.path.join(root, "current")
    assert p["pip_cache"] == os.path.join(root, "shared", "tmp", "cache", "pip")
    assert p["pids"] == os.path.join(root, "shared", "tmp", "pids")
    assert p["repo"] == os.path.join(root, "shared", "repositories", "myapp")
    assert p["app"] == "myapp" and p["name"] == "myapp-topics~foo"
    # the webapps' logs: root's folder beside the environments (supervisord, root, writes them)
    assert p["webapp_logs"] == str(unit_root / "from-pillar" / "myapp" / ".logs" / "topics~foo")
    for key, value in p.items():
        for path in value if isinstance(value, list) else [value]:
            if key not in ("app", "app_dir", "webapp_logs", "name"):
                assert os.path.normpath(path).startswith(root), (key, path)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_environment_names_are_refused(vumi, bad):
    with pytest.raises(SaltInvocationError) as exc:
        vumi.settings(bad)
    assert repr(bad) in str(exc.value)


@pytest.mark.parametrize("index", range(len(BAD_BRANCHES)))
def test_bad_branch_names_from_pillar_are_refused(vumi, index):
    # pillar is where a branch is usually set (a keyword argument works too)
    bad = BAD_BRANCHES[index]
    with pytest.raises(SaltInvocationError) as exc:
        vumi.settings(f"badbranch{index}")
    assert "branch" in str(exc.value)
    assert repr(bad) in str(exc.value)


@pytest.mark.parametrize("bad", ["HEAD;id", "$(id)", "-x", "--upload-pack=id", "v1 2", "a..b", "", "ab\ncd"])
def test_bad_revisions_are_refused(vumi, bad):
    with pytest.raises(SaltInvocationError) as exc:
        vumi.settings("staging", revision=bad)
    assert repr(bad) in str(exc.value)


@pytest.mark.parametrize(
    "key, bad",
    [
        ("base_dir", "relative/dir"),
        ("base_dir", "/"),
        ("base_dir", "/srv/../etc"),
        ("base_dir", "/srv/a\x00b"),
        ("app", "my/app"),
        ("app", ".."),
        ("app", "-app"),
        ("repo_url", "--upload-pack=touch pwned"),
        ("repo_url", ""),
        ("requirements", "/etc/passwd"),
        ("requirements", "../../etc/passwd"),
        ("requirements", "config/../../x.pip"),
        ("requirements", ""),
        ("keep_releases", 0),
        ("keep_releases", "3"),
        ("keep_releases", True),
        ("keep_failed", -1),
        ("shared_dirs", ["logs", "../etc"]),
        ("ports", [0]),
        ("ports", [70000]),
        ("ports", ["80a"]),
        ("ports", [True]),
        ("lock_timeout", "soon"),
        ("hook_timeout", 0),
        ("hook_timeout", "1h"),
        ("pip_packages", ["gunicorn\x0b"]),
    ],
)
def test_bad_settings_are_named(vumi, key, bad):
    with pytest.raises(SaltInvocationError) as exc:
        vumi.settings("staging", **{key: bad})
    message = str(exc.value)
    # the setting by its name (a list's entry by its singular: "shared dir", "port", "pip_packages entry")
    assert any(name in message for name in (key, key.rstrip("s"), key.rstrip("s").replace("_", " "))), message
    if isinstance(bad, list):  # the entry that is wrong
        assert [item for item in bad if repr(item) in message or str(item) in message], message
    else:
        assert repr(bad) in message or str(bad) in message, message


@pytest.mark.parametrize("value", ["on\x0b", "on\x1b[2J", "a\rb", "a\x7f"])
def test_env_values_with_a_control_character_are_named(vumi, value):
    # env reaches supervisor's program file, whose XML-RPC answers a \x0b breaks for every client
    with pytest.raises(SaltInvocationError, match=r"invalid env value for DEBUG: .* control character"):
        vumi.settings("staging", env={"DEBUG": value})
    assert vumi.settings("staging", env={"DEBUG": "a\tb"}, show_secrets=True)["env"] == {"DEBUG": "a\tb"}


def test_ports_accept_cli_shapes(vumi):
    assert vumi.settings("staging", ports="8000")["ports"] == [8000]
    assert vumi.settings("staging", ports=["8001", 8002, 8001])["ports"] == [8001, 8002]
    assert vumi.settings("staging", ports=8003)["ports"] == [8003]
    with pytest.raises(SaltInvocationError, match="too many ports"):
        vumi.settings("staging", ports=list(range(1000, 1100)))


@pytest.mark.parametrize("bad", ["../x", "20260101", "2026-01-01_000000", "20260101_000000/..", "x"])
def test_bad_release_names_are_refused_before_touching_disk(vumi, unit_root, bad):
    before = sorted(p for p in unit_root.rglob("*") if "pillar" not in p.parts)
    for call in (
        lambda: vumi.execute("staging", "true", release=bad),
        lambda: vumi.rollback("staging", release=bad),
        lambda: vumi.create_virtualenv("staging", release=bad),
        lambda: vumi.publish("staging", bad),
    ):
        with pytest.raises((SaltInvocationError, CommandExecutionError)) as exc:
            call()
        assert repr(bad) in str(exc.value)
    assert sorted(p for p in unit_root.rglob("*") if "pillar" not in p.parts) == before


def test_functions_on_a_never_deployed_environment_say_so(vumi, unit_root):
    before = sorted(unit_root.rglob("*"))
    for call in (
        lambda: vumi.update("staging"),
        lambda: vumi.rollback("staging"),
        lambda: vumi.create_virtualenv("staging"),
        lambda: vumi.publish("staging", "20260101_000000"),
    ):
        with pytest.raises(CommandExecutionError, match="staging is not deployed"):
            call()
    assert vumi.releases("staging") == []
    assert vumi.current("staging") is None
    assert vumi.cleanup("staging") == {"removed": [], "kept": [], "virtualenvs_removed": []}
    assert sorted(unit_root.rglob("*")) == before


@pytest.mark.parametrize("bad", ["HEAD;id", "$(id)", "--upload-pack=id", "a..b", "v 1"])
def test_bad_revision_arguments_are_refused_before_touching_disk(vumi, unit_root, bad):
    before = sorted(unit_root.rglob("*"))
    for call in (vumi.deploy, vumi.prepare, vumi.remote_revision):
        with pytest.raises(SaltInvocationError) as exc:
            call("staging", revision=bad)
        assert repr(bad) in str(exc.value)
    assert sorted(unit_root.rglob("*")) == before


@pytest.mark.parametrize(
    "given, name",
    [("SIGTERM", "SIGTERM"), ("term", "SIGTERM"), (" SIGINT ", "SIGINT"), ("sigquit", "SIGQUIT"), (10, "SIGUSR1")],
)
def test_stop_signal_is_a_signal_name(vumi, given, name):
    assert vumi.settings("staging")["stop_signal"] == "SIGTERM"  # the default
    assert vumi.settings("staging", stop_signal=given)["stop_signal"] == name


@pytest.mark.parametrize("bad", ["SIGNOPE", "SIG_IGN", "", "TERM;kill", 0, 999, True, None, ["SIGTERM"]], ids=repr)
def test_bad_stop_signals_are_named(vumi, bad):
    with pytest.raises(SaltInvocationError) as exc:
        vumi.settings("staging", stop_signal=bad)
    assert f"invalid stop_signal {bad!r}" in str(exc.value)
