"""
scripts/test runs the functional modules listed in tests/functional/DEPLOY_USER_TESTS a
second time with ``--deploy-user=unprivileged``. A new module of what the deploy user does
must not be left out of that pass: each module is listed there, or makes its own throw-away
users (the privilege-separation modules), or is named in the list's comment as left out.
"""

import pathlib

FUNCTIONAL = pathlib.Path(__file__).resolve().parents[2] / "functional"


def listed():
    lines = (FUNCTIONAL / "DEPLOY_USER_TESTS").read_text().splitlines()
    return {line.split("#")[0].strip() for line in lines} - {""}


def left_out_on_purpose():
    comments = "".join(line.split("#", 1)[1] for line in (FUNCTIONAL / "DEPLOY_USER_TESTS").read_text().splitlines()
                       if "#" in line)  # fmt: skip
    return {name for name in modules() if f"({name}:" in comments}


def modules():
    return {str(p.relative_to(FUNCTIONAL)): p for p in FUNCTIONAL.rglob("test_*.py")}


def test_every_functional_module_runs_as_a_deploy_user_too():
    found = modules()
    assert listed() <= set(found), f"listed but missing: {sorted(listed() - set(found))}"
    left_out = [
        name for name, path in sorted(found.items())
        if name not in listed() | left_out_on_purpose() and "from support.privileges import" not in path.read_text()
    ]  # fmt: skip
    assert not left_out, f"add these to tests/functional/DEPLOY_USER_TESTS: {left_out}"
    assert left_out_on_purpose() == {"formula/test_nginx.py"}
