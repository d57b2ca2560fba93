"""``salt/_utils/vumi_webapp.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import pytest
from salt.exceptions import SaltInvocationError

import vumi_webapp


def test_the_webapp_command_is_filled_quoted_and_an_unknown_field_refused(cfg, paths):
    command = vumi_webapp.webapp_command(dict(cfg, webapp_command="run {port} {code}"), paths, "20260101_000001", 8000)
    assert command == f"run 8000 {paths.code('20260101_000001')}"
    with pytest.raises(SaltInvocationError, match="invalid webapp_command"):
        vumi_webapp.webapp_command(dict(cfg, webapp_command="run {nope}"), paths, "20260101_000001", 8000)
    # no field that names one release: a supervised program runs whatever current is
    with pytest.raises(SaltInvocationError, match=r"\{release\} is not a field"):
        vumi_webapp.webapp_command(dict(cfg, webapp_command="run {release}"), paths, "20260101_000001", 8000)
    supervised = vumi_webapp.webapp_command(
        dict(cfg, webapp_command="{venv}/bin/x {code}"), paths, "20260101_000001", 8000, supervised=True
    )
    assert supervised == f"{paths.current}/ve/bin/x {paths.current}/{cfg['app']}"
