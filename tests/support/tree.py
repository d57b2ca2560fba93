"""What a test reads of a tree, as an operator would: an environment's history log, and snapshots to compare."""

import hashlib
import json
import os
import pathlib


def history(root):
    """Every line of ``<root>/history.log`` (an environment's folder), oldest first; [] when there is none."""
    path = pathlib.Path(root) / "history.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(top, skip=(), level="paths"):
    """
    Every path under ``top`` (relative to it) with what ``level`` records of it:

    ``paths``
        its kind, a link's target, a file's size;
    ``owners``
        also modes and owners, and a file's mtime (what root must not change in a user's tree);
    ``contents``
        kind, mtime and a file's SHA-256, the insides of every folder included (a virtualenv's).

    ``skip``: paths left out, with everything below them. Below ``paths`` and ``owners`` the
    insides of ``.git`` folders and of the virtualenvs in ``shared/virtualenvs`` are left out
    (for speed); links are never followed.
    """
    top = pathlib.Path(top)
    skip = {pathlib.Path(p) for p in ([skip] if isinstance(skip, (str, os.PathLike)) else skip or ())}
    found = {}
    for parent, dirs, files in os.walk(top):
        here = pathlib.Path(parent)
        for name in dirs + files:
            path = here / name
            if path not in skip:
                found[str(path.relative_to(top))] = _record(path, level)
        dirs[:] = [d for d in dirs if here / d not in skip and (level == "contents" or _look_inside(here, d))]
    return found


def _look_inside(here, name):
    return name != ".git" and here.name != "virtualenvs"


def _record(path, level):
    st = os.lstat(path)
    if os.path.islink(path):
        return ("link", os.readlink(path)) + ((st.st_uid,) if level == "owners" else ())
    if os.path.isdir(path):
        return {"paths": ("dir",), "owners": ("dir", oct(st.st_mode), st.st_uid, st.st_gid),
                "contents": ("dir", st.st_mtime_ns)}[level]  # fmt: skip
    if level == "paths":
        return ("file", st.st_size)
    if level == "owners":
        return ("file", oct(st.st_mode), st.st_uid, st.st_size, st.st_mtime_ns)
    with open(path, "rb") as fh:
        return ("file", st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
