"""
Stage ``virtualenv``: requirements hashing, and virtualenvs built once per hash and shared by releases.
"""

import hashlib
import logging
import os
import shutil
import sys

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)
import vumi_files
import vumi_history
import vumi_releases

VENV_MARKER = ".vumi-complete"


def venv_ok(venv):
    return os.path.isfile(os.path.join(venv, VENV_MARKER)) and os.access(
        os.path.join(venv, "bin", "python"), os.X_OK
    )


INCLUDE_OPTS = ("-r", "--requirement", "-c", "--constraint")


PATH_OPTS = ("-f", "--find-links", "-e", "--editable")


def hash_path(digest, path):
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    elif os.path.isdir(path):
        for top, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__"))
            for name in sorted(files):
                digest.update(os.path.relpath(os.path.join(top, name), path).encode())
                hash_path(digest, os.path.join(top, name))


def requirements_hash(cfg, code):
    """
    What a virtualenv is built from: the requirements file, the files it
    includes with -r/-c, the local paths it installs from, the interpreter.
    """
    # the interpreter itself, not the name it was reached by: salt-call (python3) and
    # the minion (python) must key one interpreter's virtualenvs alike
    digest = hashlib.sha256(os.path.realpath(interpreter(cfg)).encode() + sys.version.encode())
    seen = set()

    def add_file(path):
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        if not os.path.isfile(path):
            raise CommandExecutionError(
                f"requirements file {os.path.relpath(path, code)} not found in {code}"
            )
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        digest.update(text.encode())
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            for i, word in enumerate(words):
                opt, _, value = word.partition("=")
                if opt in INCLUDE_OPTS + PATH_OPTS:
                    value = value or (words[i + 1] if i + 1 < len(words) else "")
                elif i == 0 and word.startswith((".", "/", "file:")):
                    value = word
                else:
                    continue
                value = value[5:] if value.startswith("file:") else value
                # pip resolves relative paths against the file, else the working folder
                near = os.path.join(os.path.dirname(path), value)
                target = near if os.path.exists(near) else os.path.join(code, value)
                if opt in INCLUDE_OPTS:
                    add_file(target)
                else:
                    hash_path(digest, target)

    add_file(os.path.join(code, cfg["requirements"]))
    return digest.hexdigest()[:16]


def interpreter(cfg):
    return cfg["python"] or sys.executable


def build_venv(salt, cfg, paths, venv, code, runas):
    """Create a virtualenv at ``venv`` and install the requirements; mark it complete last."""
    if os.path.lexists(venv):
        shutil.rmtree(venv)  # half-built by an earlier, interrupted deploy
    made = salt["virtualenv.create"](venv, venv_bin=interpreter(cfg), user=runas)
    if isinstance(made, dict) and made.get("retcode"):  # it returns a failure instead of raising
        raise CommandExecutionError(f"creating the virtualenv {venv} failed: {vumi_files.output_tail(made)}")
    res = salt["pip.install"](
        requirements=os.path.join(code, cfg["requirements"]),
        bin_env=venv,
        cwd=code,
        cache_dir=paths.pip_cache,
        user=runas,
        env_vars={"PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if not isinstance(res, dict) or res.get("retcode") != 0:
        raise CommandExecutionError(f"pip install -r {cfg['requirements']} failed: {vumi_files.output_tail(res)}")
    vumi_files.write_atomic(os.path.join(venv, VENV_MARKER), vumi_files.now().isoformat() + "\n", runas)


def ensure_venv(salt, cfg, paths, name, runas):
    """Give release ``name`` an intact virtualenv; return (requirements hash, built?)."""
    code = paths.code(name)
    req_hash = requirements_hash(cfg, code)
    link = paths.venv(name)
    if not cfg["reuse_virtualenvs"]:
        built = not venv_ok(link) or os.path.islink(link)
        if built:
            if os.path.islink(link):
                os.remove(link)
            build_venv(salt, cfg, paths, link, code, runas)
        return req_hash, built
    shared = os.path.join(paths.virtualenvs, req_hash)
    built = not venv_ok(shared)
    if built:
        build_venv(salt, cfg, paths, shared, code, runas)
    if os.path.isdir(link) and not os.path.islink(link):
        shutil.rmtree(link)
    vumi_files.symlink_atomic(shared, link)
    return req_hash, built


def virtualenv(d):
    d.req_hash, d.venv_built = ensure_venv(d.salt, d.cfg, d.paths, d.release, d.runas)


def venv_env(paths, name):
    venv = paths.venv(name)
    return {
        "VIRTUAL_ENV": venv,
        "PATH": os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", os.defpath),
    }


def rebuild(salt, cfg, paths, release=None):
    """(Re)build or relink the virtualenv of a release (default: current); see ``vumi.create_virtualenv``."""
    runas = vumi_files.runas_user(cfg)
    if release is not None:
        paths.release(release)  # a bad name fails before anything else
    with vumi_history.deploy_lock(cfg, paths):
        name = vumi_releases.resolve_release(paths, release)
        req_hash, built = ensure_venv(salt, cfg, paths, name, runas)
        manifest = vumi_releases.read_manifest(paths, name)
        if manifest is not None:
            manifest.update(requirements_hash=req_hash, virtualenv=os.path.realpath(paths.venv(name)))
            vumi_releases.write_manifest(paths, name, runas, manifest)
    return {
        "release": name,
        "virtualenv": os.path.realpath(paths.venv(name)),
        "requirements_hash": req_hash,
        "built": built,
    }
