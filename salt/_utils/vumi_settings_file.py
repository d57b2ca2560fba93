"""
Stage ``settings``: pillar's ``settings`` rendered into the release as a Python module.
"""

import hashlib
import logging
import os

from salt.exceptions import CommandExecutionError

import vumi_files
import vumi_settings

log = logging.getLogger(__name__)


def settings_file(cfg):
    """The settings file pillar asks for: (path in the code folder, hash, text), or Nones."""
    if not cfg["settings"]:
        return None, None, None
    lines = ["# Written by vumi-salt from pillar vumi:settings at each deploy: edit pillar, not this file.\n"]
    if cfg["settings_extends"]:
        lines.append(f"from {cfg['settings_extends']} import *  # noqa: F401,F403\n")
    lines.extend(
        f"{key} = {vumi_settings.py_literal(value, key)!r}\n" for key, value in sorted(cfg["settings"].items())
    )
    text = "".join(lines)
    relpath = cfg["settings_path"].format(env=vumi_settings.env_module(cfg["environment"]))
    # where the file goes is part of it: a new settings_path must reach the releases too
    return relpath, hashlib.sha256(f"{relpath}\0{text}".encode()).hexdigest()[:16], text


def write_settings(d):
    """Render pillar's settings into the release: secrets stay out of the repo and away from other users."""
    relpath, d.settings_hash, text = settings_file(d.cfg)
    if relpath is None:
        return
    path = os.path.join(d.paths.code(d.release), relpath)
    folder = os.path.dirname(path)
    shared = os.path.realpath(d.paths.shared) + os.sep
    # a folder of shared_dirs (instance/ of a Flask app) is the environment's: written through its link
    into_shared = os.path.islink(folder) and os.path.realpath(folder).startswith(shared)
    if os.path.islink(path) or (os.path.islink(folder) and not into_shared):
        raise CommandExecutionError(f"{path} is a symlink; refusing to write settings through it")
    if into_shared:
        path = os.path.join(os.path.realpath(folder), os.path.basename(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    vumi_files.write_atomic(path, text, d.runas, mode=0o640)
