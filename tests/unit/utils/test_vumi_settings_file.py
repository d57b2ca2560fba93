"""``salt/_utils/vumi_settings_file.py`` on its own: real files, folders and processes in ``tmp_path``, no Salt loader."""

import getpass
import os
import pathlib

import vumi_environment
import vumi_settings_file


def test_settings_file_text_and_the_settings_module_only_when_present(cfg, paths):
    assert vumi_settings_file.settings_file(cfg) == (None, None, None)
    with_settings = dict(cfg, settings={"B": [1], "A": "x"})
    relpath, digest, text = vumi_settings_file.settings_file(with_settings)
    assert relpath == "environments/staging.py" and text.splitlines()[1:] == ["A = 'x'", "B = [1]"]
    name = "20260101_000001"
    os.makedirs(paths.code(name))
    assert vumi_environment.release_settings_module(cfg, paths, name) is None
    assert vumi_environment.release_settings_module(with_settings, paths, name) == "environments.staging"
    os.makedirs(os.path.join(paths.code(name), "environments"))
    pathlib.Path(paths.code(name), "environments", "staging.py").write_text("")
    env = vumi_environment.for_release(dict(cfg, env={"X": "1"}), paths, name)
    assert env["DJANGO_SETTINGS_MODULE"] == "environments.staging" and env["X"] == "1"
    assert env["HOME"] == os.path.expanduser("~" + getpass.getuser()) and "SALT" not in "".join(env)
