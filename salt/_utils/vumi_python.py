"""
The interpreter a release's virtualenv is made with: pillar ``python`` (a path, or a
version such as ``"3.12"``), else the repository's ``.python-version``, else one the
deploy user can run, never Salt's own when the user cannot run it. Each candidate is
asked, as the deploy user, what version it is; none fitting is a clear error naming
what was looked for and what was found.
"""

import glob
import os
import pwd
import re
import shutil
import sys

from salt.exceptions import CommandExecutionError

import vumi_files
import vumi_git
import vumi_settings

#: ``python`` as a version: 3.N (a patch level is accepted from .python-version, and ignored)
VERSION_RE = re.compile(r"^(?:cpython-|python)?(3)\.(\d{1,2})(?:\.\d+)?$")
#: what a candidate prints: its version, and whether it can make a virtualenv
PROBE = "import sys, venv; print('%d.%d.%d' % sys.version_info[:3])"


def version_of(spec):
    """``"3.12"`` -> (3, 12); None when ``spec`` is not a version (a path, None)."""
    match = VERSION_RE.match(str(spec).strip()) if spec is not None else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def probe(salt, path, runas):
    """The version ``path`` reports when the deploy user runs it (``"3.12.1"``), or None if it cannot."""
    if not os.path.isfile(path):
        return None
    try:
        return vumi_git.run(salt, [path, "-c", PROBE], path, runas=runas) or None
    except CommandExecutionError:
        return None


def _home(runas):
    try:
        return pwd.getpwnam(runas).pw_dir if runas else os.path.expanduser("~")
    except KeyError:
        return None


def _candidates(salt, want, runas):
    """Where an interpreter of version ``want`` (3, N) may be, the likeliest first (uv's discovery first)."""
    name = f"python{want[0]}.{want[1]}"
    uv = shutil.which("uv", path=os.pathsep.join((os.path.dirname(sys.executable), vumi_settings.PLAIN_PATH)))
    if uv:
        try:
            found = vumi_git.run(salt, [uv, "python", "find", "--no-cache", "--no-python-downloads", "--system", f"{want[0]}.{want[1]}"],
                                 "uv python find", runas=runas, env={"UV_PYTHON_DOWNLOADS": "never"})  # fmt: skip
            if found:
                yield found.splitlines()[-1].strip()
        except CommandExecutionError:
            pass
    for folder in vumi_settings.PLAIN_PATH.split(os.pathsep):
        yield os.path.join(folder, name)
    home = _home(runas)
    for top in ([os.path.join(home, ".pyenv", "versions")] if home else []) + ["/opt/python", "/usr/local/python"]:
        yield from sorted(glob.glob(os.path.join(top, f"{want[0]}.{want[1]}*", "bin", name)), reverse=True)


def _found(salt, runas):
    """The Pythons the deploy user can run on this host, for an error: ``3.11 (/usr/bin/python3.11)``."""
    seen = {}
    pattern = [os.path.join(f, "python3.*") for f in vumi_settings.PLAIN_PATH.split(os.pathsep)]
    home = _home(runas)
    if home:
        pattern.append(os.path.join(home, ".pyenv", "versions", "*", "bin", "python3.*"))
    for path in sorted({p for pat in pattern for p in glob.glob(pat) if re.search(r"python3\.\d+$", p)}):
        version = probe(salt, path, runas)
        if version:
            seen.setdefault(".".join(version.split(".")[:2]), path)
    return (
        ", ".join(f"{v} ({p})" for v, p in sorted(seen.items(), key=lambda i: tuple(map(int, i[0].split(".")))))
        or "none"
    )


def pinned(code):
    """The version the repository's ``.python-version`` names (its first line), or None without one."""
    if code is None:
        return None
    try:
        data = vumi_files.read_bounded(os.path.join(code, ".python-version"), 4096)
    except (OSError, vumi_files.NotRegular):
        return None
    if data is None:
        return None
    line = next((w for w in data.decode("utf-8", "replace").split() if not w.startswith("#")), "")
    if version_of(line) is None:
        raise CommandExecutionError(
            f".python-version says {line!r}: a Python version such as 3.12 (or set vumi:python)"
        )
    return line


def find(salt, cfg, runas, code=None):
    """
    (path, version) of the interpreter for the virtualenvs of ``cfg``, checked by running it
    as the deploy user; CommandExecutionError naming what was looked for when none fits.
    """
    spec, why = cfg["python"], "vumi:python"
    if spec is None:
        spec, why = pinned(code), ".python-version"
    who = cfg["user"]
    if spec is not None and version_of(spec) is None:  # a path (settings checked it is absolute)
        version = probe(salt, spec, runas)
        if version is None:
            state = "does not exist" if not os.path.exists(spec) else "cannot make virtualenvs"
            raise CommandExecutionError(f"{spec} {state} for {who}: set vumi:python to an interpreter it can run")
        return spec, version
    if spec is not None:
        want = version_of(spec)
        looked = []
        for path in _candidates(salt, want, runas):
            looked.append(path)
            version = probe(salt, path, runas)
            if version and tuple(map(int, version.split(".")[:2])) == want:
                return path, version
        shown = ", ".join(dict.fromkeys(p for p in looked if "/.pyenv/" not in p)) + ", ~/.pyenv/versions"
        raise CommandExecutionError(
            f"{why} {spec}: no Python {want[0]}.{want[1]} that {who} can run (looked at uv python find, {shown}); "
            f"found: {_found(salt, runas)}"
        )
    # nothing set: Salt's own interpreter when the user can run it (the same Python as Salt's), else python3
    for path in (sys.executable, *(os.path.join(f, "python3") for f in vumi_settings.PLAIN_PATH.split(os.pathsep))):
        version = probe(salt, path, runas)
        if version:
            return path, version
    raise CommandExecutionError(
        f"no Python that {who} can run: Salt's ({sys.executable}) and python3 on {vumi_settings.PLAIN_PATH} are not; "
        "set vumi:python"
    )
