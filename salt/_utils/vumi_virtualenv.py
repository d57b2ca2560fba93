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
import vumi_python
import vumi_settings

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


def self_reference(code, opt, target):
    """
    The extras of a requirements line that installs the app itself (``.``, ``.[pg]``,
    ``-e .``), or None for any other line: such a line means the app's dependencies, which
    are installed in its stead (the app's code runs from each release, not from the
    virtualenv), so that a commit of code alone keeps the virtualenv.
    """
    if opt not in (None, "-e", "--editable"):
        return None
    base, bracket, extras = target.partition("[")
    if os.path.realpath(base) != os.path.realpath(code) or not os.path.isfile(os.path.join(code, "pyproject.toml")):
        return None
    return [e.strip() for e in extras.rstrip("]").split(",") if e.strip()] if bracket else []


def project_requirements(path, shown, extras, asker):
    """
    The requirement lines of the pyproject.toml at ``path``: its dependencies and those of
    ``extras`` (which ``asker`` names, for the error when one is not declared).
    """
    wanted = project_dependencies(path, shown)
    if wanted is None:
        raise CommandExecutionError(f"reading {shown} needs Python 3.11+ (or install uv)")
    lines = list(wanted["dependencies"])
    for extra in extras:
        if extra not in wanted["optional-dependencies"]:
            raise CommandExecutionError(f"{asker} {extra!r}, which {shown} does not declare")
        lines += wanted["optional-dependencies"][extra]
    return lines


def self_requirements(code, extras):
    """What a requirements line that installs the app itself stands for: its pyproject.toml's dependencies."""
    return project_requirements(
        os.path.join(code, "pyproject.toml"), "pyproject.toml", extras, "the requirements ask for the extra"
    )


def source(cfg, code, exists=None):
    """
    What is installed into the virtualenv, as (kind, path in the code): ``requirements``
    (a requirements file), ``uv`` (a uv.lock), ``poetry`` (a poetry.lock) or ``pyproject``
    (a pyproject.toml alone: the project's dependencies). ``requirements`` set: that file, its
    kind by its name; unset: the first of ``INSTALL_SOURCES`` the code folder has
    (``exists(rel)`` says whether it has one; default: a file in ``code``).
    """
    if cfg["requirements"] is not None:
        name = os.path.basename(cfg["requirements"])
        kind = {"uv.lock": "uv", "poetry.lock": "poetry", "pyproject.toml": "pyproject"}.get(name, "requirements")
        return kind, cfg["requirements"]
    exists = exists or (lambda rel: os.path.isfile(os.path.join(code, rel)))
    for rel in vumi_settings.INSTALL_SOURCES:
        if not exists(rel):
            continue
        if rel.endswith(".lock"):
            if exists("pyproject.toml"):
                return rel.split(".")[0], rel
            continue
        return ("pyproject" if rel == "pyproject.toml" else "requirements"), rel
    raise CommandExecutionError(
        f"nothing to install in {code}: none of {', '.join(vumi_settings.INSTALL_SOURCES)} is there "
        "(a lockfile counts beside a pyproject.toml); set requirements"
    )


def _toml(path, shown):
    try:
        import tomllib  # pylint: disable=import-outside-toplevel
    except ImportError:  # Python < 3.11 (Salt 3006's onedir)
        try:
            import tomli as tomllib  # pylint: disable=import-outside-toplevel
        except ImportError:
            return None
    try:
        data = vumi_files.read_bounded(path, REQUIREMENTS_LIMIT, follow=True)
    except (OSError, vumi_files.NotRegular) as exc:
        raise CommandExecutionError(f"{shown}: {exc}") from None
    if data is None:
        raise CommandExecutionError(f"{shown} not found")
    try:
        return tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError as exc:
        raise CommandExecutionError(f"{shown} is not valid TOML: {exc}") from None


def project_dependencies(path, shown):
    """
    What of a pyproject.toml decides the dependencies (never its version, description or
    code): ``requires-python``, ``dependencies``, optional ones and groups, uv's and Poetry's
    tables. None where no TOML reader is at hand (the file's bytes key it then).
    """
    data = _toml(path, shown)
    if data is None:
        return None
    project = data.get("project") or {}
    tool = data.get("tool") or {}
    poetry = tool.get("poetry") or {}
    return {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies") or [],
        "optional-dependencies": project.get("optional-dependencies") or {},
        "dependency-groups": data.get("dependency-groups") or {},
        "uv": tool.get("uv") or {},
        "poetry": {k: poetry.get(k) for k in ("dependencies", "group", "source", "extras")},
    }


def requirements_hash(cfg, code, python):
    """
    What a virtualenv is built from: the interpreter (``python``: its path and version), and
    by ``source``: a requirements file, the files it includes with -r/-c, the local paths
    it installs from (what the commit holds of those in the checkout, as git says; the files
    of the others); a lockfile's bytes and what of pyproject.toml decides the dependencies;
    the extras and groups installed. The same before and after an install that builds in the
    tree, and the same after a commit that changes only the code.
    """
    # the interpreter itself, not the name it was reached by: salt-call (python3) and
    # the minion (python) must key one interpreter's virtualenvs alike
    digest = hashlib.sha256(os.path.realpath(python[0]).encode() + b"\0" + python[1].encode())
    kind, rel = source(cfg, code)
    digest.update(kind.encode() + b"\0" + rel.encode() + b"\0")
    if kind == "requirements":
        budget = _Budget()

        def visit(path, text, refs):
            digest.update(text.encode())
            for _, _, opt, target in refs:
                extras = self_reference(code, opt, target)
                if extras is not None:  # the app itself: what it depends on, not its code
                    digest.update(b"self\0" + json.dumps(self_requirements(code, extras)).encode())
                elif opt in ("-f", "--find-links") and os.path.isdir(target):
                    hash_listing(digest, target, budget)
                elif opt not in INCLUDE_OPTS:
                    files = tracked(code, target)
                    if files is None:
                        hash_path(digest, target, budget)
                    else:
                        digest.update(b"git\0" + files)

        walk_requirements(code, rel, visit)
    else:
        project = os.path.join(code, os.path.dirname(rel), "pyproject.toml")
        if kind != "pyproject":
            vumi_files.hash_file(digest, os.path.join(code, rel), LOCAL_BYTES_MAX, follow=True)
        wanted = project_dependencies(project, os.path.relpath(project, code))
        if wanted is None:
            vumi_files.hash_file(digest, project, REQUIREMENTS_LIMIT, follow=True)
        else:
            digest.update(json.dumps(wanted, sort_keys=True, default=str).encode())
        digest.update(json.dumps([cfg["install"]["extras"], cfg["install"]["groups"]]).encode())
    if cfg["pip_packages"]:  # declared extras: part of what the virtualenv is
        digest.update(json.dumps(cfg["pip_packages"]).encode())
    return digest.hexdigest()[:16]


def uv_binary(salt, cfg, python, runas):
    """uv, when ``installer: uv`` and the deploy user can run it (beside the interpreter or Salt's, or on PATH); else None."""
    if cfg["installer"] != "uv":
        return None
    return _tool(salt, "uv", python, runas, ["--version"])


def _tool(salt, name, python, runas, args):
    """A tool beside the interpreter or Salt's, or on PATH, that the deploy user can run (``args`` succeed); else None."""
    for candidate in dict.fromkeys((os.path.join(os.path.dirname(python), name), os.path.join(os.path.dirname(sys.executable), name),
                                    shutil.which(name, path=vumi_settings.PLAIN_PATH))):  # fmt: skip
        if candidate and os.path.isfile(candidate):
            try:
                vumi_git.run(salt, [candidate, *args], f"{name} {' '.join(args)}", runas=runas)
                return candidate
            except CommandExecutionError:
                continue
    return None


def poetry_binary(salt, python, runas):
    """Poetry with its export plugin that the deploy user can run."""
    found = _tool(salt, "poetry", python, runas, ["export", "--help"])
    if found is None:
        raise CommandExecutionError(
            "the app has a poetry.lock, but there is no Poetry with its export plugin that the deploy user can run "
            "(pip install poetry poetry-plugin-export, beside Salt or on PATH); or set requirements"
        )
    return found


def uv_requirements(code, top, dest):
    """
    The requirements as installed: a copy of each file under ``dest`` with every
    local path made absolute as pip would resolve it (uv takes no relative ones in
    a file), includes pointing at their copies, a line that installs the app itself
    replaced by its dependencies (``self_reference``). Returns the top copy.
    """
    copies = {}

    def visit(path, text, refs):
        lines = text.splitlines()
        for number, i, opt, target in refs:
            extras = self_reference(code, opt, target)
            if extras is not None:
                lines[number] = "\n".join(self_requirements(code, extras))
                continue
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


def build_venv(salt, cfg, paths, venv, code, runas, python):
    """
    Create a virtualenv at ``venv`` with interpreter ``python`` (path, version) and install
    what ``source`` finds, with uv where it can run, else pip; mark it complete last.
    Returns the installer used.
    """
    if os.path.lexists(venv):
        shutil.rmtree(venv)  # half-built by an earlier, interrupted deploy
    for cache in (paths.pip_cache, paths.uv_cache):  # a cache_dir of the user's: made by the user
        vumi_files.makedirs(cache, runas)
    kind, rel = source(cfg, code)
    uv = uv_binary(salt, cfg, python[0], runas)
    if kind == "uv" and uv is None:
        raise CommandExecutionError(
            f"{rel} is installed with uv, which the deploy user cannot run here (installer: {cfg['installer']}): "
            "install uv beside Salt or on PATH, or set requirements"
        )
    # uv keeps its own settings out: no Python downloads, no progress bars in the log
    env = {**cfg["install"]["env"], "UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", "UV_CACHE_DIR": paths.uv_cache,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CACHE_DIR": paths.pip_cache}  # fmt: skip
    build = Build(salt, cfg, venv, code, runas, env, uv)
    if uv is not None:
        build.run([uv, "venv", "--quiet", "--python", python[0], venv], f"creating the virtualenv {venv} with uv")
    else:
        build.run([python[0], "-m", "venv", venv], f"creating the virtualenv {venv}")
    if kind == "uv":
        build.uv_sync(rel)
    elif kind == "poetry":
        build.requirements(build.poetry_export(rel, python[0]), f"the export of {rel}")
    elif kind == "pyproject":
        build.pyproject(rel)
    else:
        build.requirements(rel, rel)
    if uv is not None:
        for folder in (venv, paths.uv_cache):
            close_locks(folder)
    installer = "uv" if uv else "pip"
    vumi_files.write_atomic(os.path.join(venv, VENV_MARKER), f"{vumi_files.now().isoformat()} {installer}\n", runas)
    return installer


def close_locks(folder):
    """
    uv makes its lock files writable by every user (0666, whatever the umask: a cache shared
    between users); in the environment's tree nothing is, so each build's are made 0644 (the
    deploy user, who owns them, still takes them).
    """
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
        for name in files:
            if name.endswith(".lock"):
                path = os.path.join(top, name)
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_IWOTH:
                    os.chmod(path, 0o644)


class Build:
    """The commands that fill one virtualenv, as the deploy user, in the code folder, with the installers' env."""

    def __init__(self, salt, cfg, venv, code, runas, env, uv):
        self.salt, self.cfg, self.venv, self.code, self.runas, self.env, self.uv = salt, cfg, venv, code, runas, env, uv
        self.python = os.path.join(venv, "bin", "python")
        self.extras = [f"--extra={e}" for e in cfg["install"]["extras"]]
        self.compile = ["--compile-bytecode"] if cfg["install"]["compile_bytecode"] else []

    def run(self, cmd, what, cwd=None):
        return vumi_git.run(self.salt, cmd, what, cwd=cwd or self.code, runas=self.runas, env=self.env)

    def install(self, args, what):
        """Install with uv or pip, plus ``pip_packages``; compiled only with ``install:compile_bytecode``."""
        if self.uv is not None:
            cmd = [self.uv, "pip", "install", "--quiet", *self.compile, "--python", self.python]
        else:
            cmd = [self.python, "-m", "pip", "install", "--quiet", *([] if self.compile else ["--no-compile"])]
        self.run([*cmd, *args, *self.cfg["pip_packages"]], what)

    def own_folder(self):
        folder = os.path.join(self.venv, ".vumi-requirements")
        vumi_files.makedirs(folder, self.runas)
        return folder

    def requirements(self, rel, what):
        """A requirements file (relative to the code, or absolute), installed as ``uv_requirements`` copies it."""
        if not os.path.isabs(rel):
            copy = uv_requirements(self.code, rel, self.own_folder())
            for path in (os.path.dirname(copy), *glob.glob(os.path.join(os.path.dirname(copy), "*"))):
                vumi_files.chown(path, self.runas)
            rel = copy
        self.install(["--requirement", rel], f"{'uv ' if self.uv else ''}pip install -r {what}")

    def uv_sync(self, rel):
        """The locked set of a uv.lock (refused when out of date with pyproject.toml): no dev group, not the project."""
        groups = [f"--group={g}" for g in self.cfg["install"]["groups"]]
        self.env["UV_PROJECT_ENVIRONMENT"] = self.venv
        self.run([self.uv, "sync", "--locked", "--no-dev", "--no-install-project", *self.compile, "--quiet",
                  "--python", self.python, *self.extras, *groups], f"uv sync --locked ({rel})",
                 cwd=os.path.join(self.code, os.path.dirname(rel)))  # fmt: skip
        if self.cfg["pip_packages"]:
            self.install([], "uv pip install of pip_packages")

    def poetry_export(self, rel, python):
        """The locked set of a poetry.lock (refused when out of date), as a requirements file with hashes."""
        poetry = poetry_binary(self.salt, python, self.runas)
        project = os.path.join(self.code, os.path.dirname(rel))
        self.env.update(POETRY_CACHE_DIR=os.path.join(os.path.dirname(self.env["PIP_CACHE_DIR"]), "poetry"),
                        POETRY_VIRTUALENVS_CREATE="false", POETRY_NO_INTERACTION="1")  # fmt: skip
        self.run([poetry, "check", "--lock"], f"poetry check --lock ({rel})", cwd=project)
        out = os.path.join(self.own_folder(), "poetry-export.txt")
        extras = [f"--extras={e}" for e in self.cfg["install"]["extras"]]
        groups = [f"--with={g}" for g in self.cfg["install"]["groups"]]
        self.run([poetry, "export", "--format=requirements.txt", f"--output={out}", *extras, *groups],
                 f"poetry export ({rel})", cwd=project)  # fmt: skip
        return out

    def pyproject(self, rel):
        """A pyproject.toml alone: its dependencies (and the extras asked for), resolved now; not the project."""
        path = os.path.join(self.code, rel)
        if self.uv is not None:
            self.install(["--requirement", path, *self.extras], f"uv pip install -r {rel}")
            return
        lines = project_requirements(path, rel, self.cfg["install"]["extras"], "install:extras names")
        out = os.path.join(self.own_folder(), "pyproject.txt")
        vumi_files.write_atomic(out, "".join(f"{line}\n" for line in lines), self.runas)
        self.install(["--requirement", out], f"pip install of {rel}'s dependencies")


def ensure_venv(salt, cfg, paths, name, runas):
    """Give release ``name`` an intact virtualenv; return (requirements hash, built?, interpreter (path, version))."""
    code = paths.code(name)
    python = vumi_python.find(salt, cfg, runas, code)
    req_hash = requirements_hash(cfg, code, python)
    link = paths.venv(name)
    if not cfg["reuse_virtualenvs"]:
        built = not venv_ok(link) or os.path.islink(link)
        if built:
            if os.path.islink(link):
                os.remove(link)
            build_venv(salt, cfg, paths, link, code, runas, python)
        return req_hash, built, python
    shared = os.path.join(paths.virtualenvs, req_hash)
    built = not venv_ok(shared)
    if built:
        build_venv(salt, cfg, paths, shared, code, runas, python)
    if os.path.isdir(link) and not os.path.islink(link):
        shutil.rmtree(link)
    vumi_files.symlink_atomic(shared, link)
    return req_hash, built, python


def virtualenv(d):
    d.req_hash, d.venv_built, d.python = ensure_venv(d.salt, d.cfg, d.paths, d.release, d.runas)
    d.install_source = source(d.cfg, d.paths.code(d.release))[1]


def rebuild(salt, cfg, paths, release=None):
    """(Re)build or relink the virtualenv of a release (default: current); see ``vumi.create_virtualenv``."""
    runas = vumi_files.runas_user(cfg)
    if release is not None:
        paths.release(release)  # a bad name fails before anything else
    with vumi_lock.deploy_lock(cfg, paths):
        name = vumi_manifest.resolve_release(paths, release)
        req_hash, built, _ = ensure_venv(salt, cfg, paths, name, runas)
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
