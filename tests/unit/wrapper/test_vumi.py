"""
The salt-ssh wrapper ``salt/_wrapper/vumi.py``: it wraps every
module function that reads settings, and hands each the controller's ``vumi``
pillar (without the ``settings`` mappings unless the function uses them).
No ssh here: tests/integration/test_salt_ssh.py runs it for real.
"""

import ast
import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]

MODULE = REPO / "salt" / "_modules" / "vumi.py"
WRAPPER = REPO / "salt" / "_wrapper" / "vumi.py"

PILLAR = {
    "base_dir": "/srv/apps",
    "settings": {"SECRET_KEY": "top"},
    "sls": {"layout": True},  # an SLS-only key: the module ignores it
    "environments": {
        "staging": {"ports": [8001], "settings": {"SECRET_KEY": "staging"}},
        "production": None,
    },
}


@pytest.fixture
def wrapper(monkeypatch):
    spec = importlib.util.spec_from_file_location("vumi_ssh_wrapper_under_test", WRAPPER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = []

    def on_host():
        class Host(dict):
            def __missing__(self, name):
                def call(*args, **kwargs):
                    calls.append((name, args, kwargs))
                    return {"called": name}

                return call

        return Host()

    mod.__pillar__ = {"vumi": PILLAR}
    monkeypatch.setattr(mod, "_on_host", on_host)
    mod.calls = calls
    return mod


def _functions_reading_settings():
    tree = ast.parse(MODULE.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and node.args.kwarg
    }


def test_every_function_that_reads_settings_is_wrapped(wrapper):
    assert set(wrapper.FUNCTIONS) == _functions_reading_settings()
    assert set(wrapper.WITH_SETTINGS) <= set(wrapper.FUNCTIONS)
    for name in wrapper.FUNCTIONS:
        assert callable(getattr(wrapper, name)) and getattr(wrapper, name).__name__ == name


def test_calls_the_host_with_the_controllers_pillar(wrapper):
    assert wrapper.restart_webapp("staging", 8001, __pub_fun="x", stop_timeout=3) == {"called": "vumi.restart_webapp"}
    ((name, args, kwargs),) = wrapper.calls
    assert (name, args) == ("vumi.restart_webapp", ("staging", 8001))
    assert kwargs["stop_timeout"] == 3 and "__pub_fun" not in kwargs
    sent = kwargs["vumi_pillar"]
    # what the function does not use stays on the controller: no settings (secrets) on the wire
    assert sent["base_dir"] == "/srv/apps" and "settings" not in sent
    assert sent["environments"] == {"staging": {"ports": [8001]}, "production": {}}
    assert PILLAR["environments"]["staging"]["settings"] == {"SECRET_KEY": "staging"}  # not mutated


@pytest.mark.parametrize("fun", ["deploy", "prepare", "current", "settings"])
def test_functions_using_the_settings_get_them(wrapper, fun):
    getattr(wrapper, fun)("staging")
    ((_, _, kwargs),) = wrapper.calls
    assert kwargs["vumi_pillar"] == PILLAR


def test_an_explicit_vumi_pillar_wins(wrapper):
    wrapper.execute("production", "./manage.py syncdb", vumi_pillar={"base_dir": "/elsewhere"})
    ((_, args, kwargs),) = wrapper.calls
    assert args == ("production", "./manage.py syncdb")
    assert kwargs == {"vumi_pillar": {"base_dir": "/elsewhere"}}


def test_the_module_reads_vumi_pillar_instead_of_its_own(vumi, vumi_config):
    given = {"base_dir": "/srv/apps", "sls": {}, "environments": {"staging": {"ports": [8001, 8002]}}}
    cfg = vumi.settings("staging", vumi_pillar=given)
    assert (cfg["base_dir"], cfg["ports"]) == ("/srv/apps", [8001, 8002])
    # this host's own pillar (vumi_config) is not read under it: the defaults are
    assert cfg["repo_url"] == "http://github.com/praekelt/vumi.git" != vumi_config["repo_url"]
    assert vumi.settings("staging")["base_dir"] == vumi_config["base_dir"]
    assert vumi.paths("staging", vumi_pillar=given)["root"] == "/srv/apps/vumi/staging"
