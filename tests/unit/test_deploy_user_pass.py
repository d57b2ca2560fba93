"""
scripts/test runs the functional modules listed in tests/functional/DEPLOY_USER_TESTS a
second time with ``--deploy-user=unprivileged``. A new module of what the deploy user does
must not be left out of that pass: each module is listed there, or makes its own throw-away
users (the privilege-separation modules).
"""

import pathlib

FUNCTIONAL = pathlib.Path(__file__).resolve().parents[1] / "functional"


def listed():
    lines = (FUNCTIONAL / "DEPLOY_USER_TESTS").read_text().splitlines()
    return {line.split("#")[0].strip() for line in lines} - {""}


def makes_its_own_users(path):
    text = path.read_text()
    return "from privileges_support import" in text


def test_every_functional_module_runs_as_a_deploy_user_too():
    modules = {p.name: p for p in FUNCTIONAL.glob("test_*.py")}
    assert listed() <= set(modules), f"listed but missing: {sorted(listed() - set(modules))}"
    left_out = [
        name for name, path in sorted(modules.items()) if name not in listed() and not makes_its_own_users(path)
    ]
    assert not left_out, f"add these to tests/functional/DEPLOY_USER_TESTS: {left_out}"
