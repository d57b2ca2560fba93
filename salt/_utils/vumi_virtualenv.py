"""
Stage ``virtualenv``: requirements hashing, and virtualenvs built once per hash and shared by releases.
"""

import glob
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys

from salt.exceptions import CommandExecutionError

import vumi_files
import vumi_git
import vumi_lock
import vumi_manifest

log = logging.getLogger(__name__)

VENV_MARKER = ".vumi-complete"


def built_with(venv):
    """The installer that built a virtualenv (``uv``, ``pip``), from its marker; None if unknown."""
    try:
        data = vumi_files.read_bounded(os.path.join(venv, VENV_MARKER), 4096, follow=True)
    except (OSError, vumi_files.NotRegular):
        return None
    words = (data or b"").decode("utf-8", "replace").split()
    if not words:
        return None
    return words[1] if len(words) > 1 and words[1] in ("uv", "pip") else "pip"


def venv_ok(venv):
    return os.path.isfile(os.path.join(venv, VENV_MARKER)) and os.access(os.path.join(venv, "bin", "python"), os.X_OK)


INCLUDE_OPTS = ("-r", "--requirement", "-c", "--constraint")
PATH_OPTS = ("-f", "--find-links", "-e", "--editable")


#: what the hash of the requirements reads at most: a requirements file (each), the files
#: of the local paths it installs from (all of them, and their bytes); past that the deploy
#: fails naming the path (``-e /`` must not walk the whole file system at every no-op)
REQUIREMENTS_LIMIT = 1 << 20
LOCAL_FILES_MAX = 100_000
LOCAL_BYTES_MAX = 4 << 30


class _Budget:
    def __init__(self):
        self.files, self.bytes = 0, 0

    def spend(self, path, size):
        self.files += 1
        self.bytes += size
        if self.files > LOCAL_FILES_MAX or self.bytes > LOCAL_BYTES_MAX:
            raise CommandExecutionError(
                f"the local paths the requirements install from hold more than {LOCAL_FILES_MAX} files or "
                f"{LOCAL_BYTES_MAX >> 30} GiB (at {path}); name a smaller folder"
            )


def hash_path(digest, path, budget=None):
    """A local path's content: a file's bytes, a folder's names and files (its links as links), by chunks."""
    budget = budget or _Budget()
    if os.path.isfile(path):
        budget.spend(path, os.stat(path).st_size)
        vumi_files.hash_file(digest, path, LOCAL_BYTES_MAX, follow=True)
    elif os.path.isdir(path):
        for top, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__"))
            for name in sorted(files):
                full = os.path.join(top, name)
                digest.update(os.path.relpath(full, path).encode())
                info = os.lstat(full)
                budget.spend(full, info.st_size)
                if stat.S_ISLNK(info.st_mode):
                    digest.update(b"link\0" + os.readlink(full).encode(errors="surrogateescape"))
                elif stat.S_ISREG(info.st_mode):
                    vumi_files.hash_file(digest, full, LOCAL_BYTES_MAX)


def tracked(code, target):
    """
    What git says a local path of the release's checkout holds: each tracked file's mode,
    blob id and name (``git ls-files --stage``), or None (outside the checkout, not
    tracked, no git). Not the files themselves: a build writes into a local package's
    folder (setuptools' ``*.egg-info``, ``build/``), and the key must not move with it.
    """
    rel = os.path.relpath(os.path.realpath(target), os.path.realpath(code))
    if rel == ".." or rel.startswith(".." + os.sep):
        return None
    try:
        proc = subprocess.run(
            ["git", "-C", code, "ls-files", "--stage", "-z", "--", rel],
            capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 and proc.stdout else None


def hash_listing(digest, folder, budget=None):
    """
    A find-links folder as pip sees it: the archives at its top, never what is
    below (``-f /usr`` must not read 5 GB at every no-op).
    """
    budget = budget or _Budget()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False) and entry.name.endswith((".whl", ".tar.gz", ".zip", ".tar.bz2")):
            digest.update(entry.name.encode() + b"\0")
            hash_path(digest, entry.path, budget)


def _local(path, value, code):
    """A local path named in requirements file ``path``, resolved as pip does: near the file, else in ``code``."""
    value = value[5:] if value.startswith("file:") else value
    near = os.path.join(os.path.dirname(path), value)
    return near if os.path.exists(near) else os.path.join(code, value)


def walk_requirements(code, top, visit):
    """
    Read requirements file ``top`` (relative to ``code``) and the files it
    includes (-r/-c), each once, and call ``visit(path, text, refs)``, where
    ``refs`` lists (line number, word index, option, local path) for every
    include and every local path installed from (-f, -e, ./pkg, /pkg, file:).
    """
    seen = set()

    def read(path):
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        shown = os.path.relpath(path, code)
        shown = path if shown.startswith("..") else shown  # outside the code folder: where it is
        try:
            data = vumi_files.read_bounded(path, REQUIREMENTS_LIMIT, follow=True)
        except vumi_files.NotRegular as exc:
            raise CommandExecutionError(f"requirements file {shown}: {exc}") from None
        except OSError as exc:
            raise CommandExecutionError(f"requirements file {shown}: {exc.strerror}") from None
        if data is None:
            raise CommandExecutionError(f"requirements file {shown} not found in {code}")
        text = data.decode("utf-8", "replace")
        refs = []
        for number, line in enumerate(text.splitlines()):
            words = line.split("#", 1)[0].split()
            for i, word in enumerate(words):
                opt, eq, value = word.partition("=")
                if opt in INCLUDE_OPTS + PATH_OPTS:
                    if not eq:
                        i, value = i + 1, words[i + 1] if i + 1 < len(words) else ""
                elif i == 0 and word.startswith((".", "/", "file:")):
                    opt, value = None, word
                else:
                    continue
                if value and "://" not in value:
                    refs.append((number, i, opt, _local(path, value, code)))
        visit(path, text, refs)
        for _, _, opt, target in refs:
            if opt in INCLUDE_OPTS:
                read(target)

    read(os.path.join(code, top))


def requirements_hash(cfg, code):
    """
    What a virtualenv is built from: the requirements file, the files it
    includes with -r/-c, the local paths it installs from (what the commit holds
    of those in the checkout, as git says; the files of the others), the
    interpreter. The same before and after an install that builds in the tree.
    """
    # the interpreter itself, not the name it was reached by: salt-call (python3) and
    # the minion (python) must key one interpreter's virtualenvs alike
    digest = hashlib.sha256(os.path.realpath(interpreter(cfg)).encode() + sys.version.encode())
    budget = _Budget()

    def visit(path, text, refs):
        digest.update(text.encode())
        for _, _, opt, target in refs:
            if opt in ("-f", "--find-links") and os.path.isdir(target):
                hash_listing(digest, target, budget)
            elif opt not in INCLUDE_OPTS:
                files = tracked(code, target)
                if files is None:
                    hash_path(digest, target, budget)
                else:
                    digest.update(b"git\0" + files)

    walk_requirements(code, cfg["requirements"], visit)
    if cfg["pip_packages"]:  # declared extras: part of what the virtualenv is
        digest.update(json.dumps(cfg["pip_packages"]).encode())
    return digest.hexdigest()[:16]


def interpreter(cfg):
    return cfg["python"] or sys.executable


def uv_binary(salt, cfg, runas):
    """uv, when ``installer: uv`` and the deploy user can run it (beside the interpreter, or on PATH); else None."""
    if cfg["installer"] != "uv":
        return None
    for candidate in (os.path.join(os.path.dirname(interpreter(cfg)), "uv"), shutil.which("uv")):
        if candidate and os.access(candidate, os.X_OK):
            res = salt["cmd.run_all"]([candidate, "--version"], runas=runas, python_shell=False,
                                      output_loglevel="quiet", ignore_retcode=True)  # fmt: skip
            if res["retcode"] == 0:
                return candidate
    return None


def uv_requirements(code, top, dest):
    """
    The requirements for uv, which takes no relative local paths in a file: a
    copy of each file under ``dest`` with every local path made absolute as pip
    would resolve it, includes pointing at their copies. Returns the top copy.
    """
    copies = {}

    def visit(path, text, refs):
        lines = text.splitlines()
        for number, i, opt, target in refs:
            words = lines[number].split("#", 1)[0].split()
            absolute = os.path.abspath(target)
            if opt in INCLUDE_OPTS:
                absolute = copy_of(target)
            words[i] = f"{opt}={absolute}" if opt and words[i].startswith(opt + "=") else absolute
            lines[number] = " ".join(words)
        copies[os.path.realpath(path)] = "\n".join(lines) + "\n"

    def copy_of(path):
        return os.path.join(dest, hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:12] + ".txt")

    walk_requirements(code, top, visit)
    os.makedirs(dest, exist_ok=True)
    for real, text in copies.items():
        with open(copy_of(real), "w", encoding="utf-8") as fh:
            fh.write(text)
    return copy_of(os.path.join(code, top))


def build_venv(salt, cfg, paths, venv, code, runas):
    """
    Create a virtualenv at ``venv`` and install the requirements, with uv where
    it can run, else pip; mark it complete last. Returns the installer used.
    """
    if os.path.lexists(venv):
        shutil.rmtree(venv)  # half-built by an earlier, interrupted deploy
    for cache in (paths.pip_cache, paths.uv_cache):  # a cache_dir of the user's: made by the user
        vumi_files.makedirs(cache, runas)
    uv = uv_binary(salt, cfg, runas)
    if uv is not None:
        _build_with_uv(salt, cfg, paths, venv, code, runas, uv)
    else:
        _build_with_pip(salt, cfg, paths, venv, code, runas)
    installer = "uv" if uv else "pip"
    vumi_files.write_atomic(os.path.join(venv, VENV_MARKER), f"{vumi_files.now().isoformat()} {installer}\n", runas)
    return installer


def _build_with_pip(salt, cfg, paths, venv, code, runas):
    made = salt["virtualenv.create"](venv, venv_bin=interpreter(cfg), user=runas)
    if isinstance(made, dict) and made.get("retcode"):  # it returns a failure instead of raising
        raise CommandExecutionError(f"creating the virtualenv {venv} failed: {vumi_files.output_tail(made)}")
    res = salt["pip.install"](
        pkgs=cfg["pip_packages"] or None,
        requirements=os.path.join(code, cfg["requirements"]),
        bin_env=venv,
        cwd=code,
        cache_dir=paths.pip_cache,
        user=runas,
        env_vars={"PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if not isinstance(res, dict) or res.get("retcode") != 0:
        raise CommandExecutionError(f"pip install -r {cfg['requirements']} failed: {vumi_files.output_tail(res)}")


def _build_with_uv(salt, cfg, paths, venv, code, runas, uv):
    # uv keeps its own settings out: no Python downloads, no progress bars in the log
    env = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", "UV_CACHE_DIR": paths.uv_cache}
    vumi_git.run(salt, [uv, "venv", "--quiet", "--python", interpreter(cfg), venv],
                 f"creating the virtualenv {venv} with uv", cwd=code, runas=runas, env=env)  # fmt: skip
    requirements = uv_requirements(code, cfg["requirements"], os.path.join(venv, ".vumi-requirements"))
    for path in (os.path.dirname(requirements), *glob.glob(os.path.join(os.path.dirname(requirements), "*"))):
        vumi_files.chown(path, runas)
    # compiled as pip compiles: the webapp's first start (and a health check) need not compile it
    vumi_git.run(salt, [uv, "pip", "install", "--quiet", "--compile-bytecode", "--python", os.path.join(venv, "bin", "python"),
                        "--requirement", requirements, *cfg["pip_packages"]],
                 f"uv pip install -r {cfg['requirements']}", cwd=code, runas=runas, env=env)  # fmt: skip


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


def rebuild(salt, cfg, paths, release=None):
    """(Re)build or relink the virtualenv of a release (default: current); see ``vumi.create_virtualenv``."""
    runas = vumi_files.runas_user(cfg)
    if release is not None:
        paths.release(release)  # a bad name fails before anything else
    with vumi_lock.deploy_lock(cfg, paths):
        name = vumi_manifest.resolve_release(paths, release)
        req_hash, built = ensure_venv(salt, cfg, paths, name, runas)
        manifest = vumi_manifest.read_manifest(paths, name)
        if manifest is not None:
            manifest.update(requirements_hash=req_hash, virtualenv=os.path.realpath(paths.venv(name)))
            vumi_manifest.write_manifest(paths, name, runas, manifest)
    return {
        "release": name,
        "virtualenv": os.path.realpath(paths.venv(name)),
        "requirements_hash": req_hash,
        "built": built,
    }
