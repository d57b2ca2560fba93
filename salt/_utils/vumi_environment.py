"""
The environment of every process that runs a release's code: the webapp, its
health check, ``execute``, ``managepy`` and hooks. Built from nothing (not from
Salt's own environment, which is root's): the deploy user's ``HOME``, ``USER``
and ``LOGNAME``, a plain ``PATH`` with the release's virtualenv first, the
release's identity, ``DJANGO_SETTINGS_MODULE`` when the release has that
module, and pillar ``env`` last.
"""

import os
import pwd

import vumi_manifest
import vumi_settings
import vumi_settings_file


def release_settings_module(cfg, paths, name):
    """
    ``settings_module`` when release ``name`` has it (a file of the code, or the
    one pillar ``settings`` writes there), else None: an app without it (a
    ``django-admin startproject`` site) keeps its own default.
    """
    module = vumi_settings.settings_module(cfg)
    if not module:
        return None
    if vumi_settings_file.settings_file(cfg)[0] is not None:
        return module
    base = os.path.join(paths.code(name), *module.split("."))
    return module if os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__init__.py")) else None


def _base(cfg, venv):
    user = pwd.getpwnam(cfg["user"])  # callers checked it exists (vumi_files.runas_user)
    env = {
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "PATH": os.path.join(venv, "bin") + os.pathsep + vumi_settings.PLAIN_PATH,
        "LANG": "C.UTF-8",
        "VIRTUAL_ENV": venv,
        "VUMI_ENV": cfg["environment"],
    }
    db = cfg.get("database")
    if db:  # pillar env may still name another URL: it comes later
        env[db["url_env"]] = db["url"]
        env.update({name: str(db[part]) for name, part in db["env"].items()})  # the parts, as the app reads them
    return env


def for_release(cfg, paths, name, **extra):
    """The environment of a process of release ``name`` (``extra`` adds e.g. ``VUMI_PORT``)."""
    manifest = vumi_manifest.read_manifest(paths, name) or {}
    env = dict(_base(cfg, paths.venv(name)), VUMI_RELEASE=name, VUMI_REVISION=manifest.get("revision") or "")
    module = release_settings_module(cfg, paths, name)
    if module:
        env["DJANGO_SETTINGS_MODULE"] = module
    env.update({key: str(value) for key, value in (cfg["env"] or {}).items()})
    env.update({key: str(value) for key, value in extra.items()})
    return env


def for_current(cfg, paths):
    """
    The environment of a supervised webapp, which runs whatever ``current`` is when it
    starts: paths through ``current``, nothing that names one release (the app finds its
    release from its working directory).
    """
    env = _base(cfg, paths.current_venv())
    name = vumi_manifest.current_release_safe(paths)
    module = release_settings_module(cfg, paths, name) if name else None
    if module:
        env["DJANGO_SETTINGS_MODULE"] = module
    env.update({key: str(value) for key, value in (cfg["env"] or {}).items()})
    return env
