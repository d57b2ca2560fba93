"""``salt/_utils/vumi_settings.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import pathlib
import re

import pytest
import yaml
from salt.exceptions import SaltInvocationError

import vumi_settings


def test_settings_precedence_and_mappings_merged_key_by_key():
    pillar = {"env": {"A": "global", "B": "global"}, "ports": [1],
              "environments": {"staging": {"env": {"B": "staging"}, "ports": [2]}}}  # fmt: skip
    cfg = vumi_settings.merge("staging", pillar, {"ports": [0]}, {"env": {"C": 3}})
    assert cfg["env"] == {"A": "global", "B": "staging", "C": "3"} and cfg["ports"] == [2]
    assert cfg["environment"] == "staging" and cfg["branch"] == "staging"
    assert vumi_settings.masked(cfg)["env"] == {"A": "**********", "B": "**********", "C": "**********"}


def test_hooks_are_normalised_and_bad_ones_named():
    assert vumi_settings.hooks({"before_publish": ["a", {"run": "b", "once": True, "timeout": 5}]}, 60) == {
        "before_publish": [{"run": "a", "once": False, "timeout": 60.0}, {"run": "b", "once": True, "timeout": 5.0}],
        "after_publish": []}  # fmt: skip
    with pytest.raises(SaltInvocationError, match="hooks:after_publish entry"):
        vumi_settings.hooks({"after_publish": [{"run": "x", "when": "always"}]})
    for bad in (0, -1, "10", True, float("nan"), float("inf")):
        with pytest.raises(SaltInvocationError, match="invalid hooks:before_publish timeout"):
            vumi_settings.hooks({"before_publish": [{"run": "x", "timeout": bad}]})
    with pytest.raises(SaltInvocationError, match="invalid hook_timeout"):
        vumi_settings.merge("staging", {"hook_timeout": 0}, None, {})


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://deploy:hunter2@git.example.org/app.git", "https://deploy:****@git.example.org/app.git"),
        ("https://ghp_token123@github.com/me/app.git", "https://****@github.com/me/app.git"),
        ("git clone ssh://git@host/app.git failed", "git clone ssh://****@host/app.git failed"),
        ("/srv/git/app.git", "/srv/git/app.git"),
        ("git@github.com:me/app.git", "git@github.com:me/app.git"),  # scp form: a user name, no secret
    ],
)
def test_credentials_in_urls_are_masked(url, shown):
    assert vumi_settings.mask_credentials(url) == shown


def test_every_key_has_one_entry_in_the_settings_reference():
    repo = pathlib.Path(__file__).resolve().parents[3]
    formula = yaml.safe_load((repo / "salt" / "vumi" / "defaults.yaml").read_text())
    keys = set(vumi_settings.DEFAULTS) | {"manage_user"}
    keys |= {f"supervisor:{k}" for k in vumi_settings.SUPERVISOR_DEFAULTS}
    keys |= {f"database:{k}" for k in vumi_settings.DATABASE_DEFAULTS}
    keys |= {f"{group}:{k}" for group in ("sls", "nginx") for k in formula[group]}
    text = (repo / "docs" / "settings-reference.md").read_text()
    entries = re.findall(r"^### `([a-z_:]+)`$", text, re.M)
    assert sorted(entries) == sorted(set(entries)), "a key with two entries"
    assert set(entries) == keys, f"undocumented: {keys - set(entries)}; documented but unknown: {set(entries) - keys}"
