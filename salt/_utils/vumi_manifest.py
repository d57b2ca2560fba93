"""
Releases as the tree shows them: each one's manifest (read to a bound and checked, or
written), their names, and which is ``current``. The bottom layer: files and settings only.
"""

import contextlib
import json
import os

from salt.exceptions import CommandExecutionError, SaltInvocationError

import vumi_files
import vumi_settings

#: a manifest is a few hundred bytes; a larger one is not ours
MANIFEST_LIMIT = 64 << 10
#: what a manifest's values may be: short text, numbers, flags, nothing nested
TEXT_LIMIT = 4096


def read_manifest(paths, name):
    """
    Release ``name``'s manifest, checked (None: missing, or not a manifest): read
    through a descriptor that is a regular file, to a bound; each value a short
    scalar, ``revision`` a full commit id, ``release`` the release's own name.
    """
    found = vumi_files.read_json(paths.manifest(name), MANIFEST_LIMIT)
    return clean_manifest(found, name) if found else None


def clean_manifest(found, name):
    if not isinstance(found, dict):
        return None
    clean = {}
    for key, value in found.items():
        if not isinstance(key, str) or len(key) > 64:
            continue
        if (
            value is None
            or isinstance(value, (bool, int, float))
            or (isinstance(value, str) and len(value) <= TEXT_LIMIT)
        ):
            clean[key] = value
    if not (isinstance(clean.get("revision"), str) and vumi_settings.SHA_RE.match(clean["revision"])):
        return None  # a manifest says which commit: without one it is not complete
    if clean.get("release", name) != name:
        return None
    return clean


def current_release(paths):
    if os.path.isdir(paths.current) and not os.path.islink(paths.current):
        raise CommandExecutionError(f"{paths.current} is a directory, not a symlink; refusing")
    if not os.path.islink(paths.current):
        return None
    target = os.readlink(paths.current)
    name = os.path.basename(target.rstrip("/"))
    expected = os.path.join("releases", name)
    if target not in (expected, os.path.join(paths.root, expected)) or not vumi_settings.RELEASE_RE.match(name):
        raise CommandExecutionError(f"{paths.current} points outside the releases: {target}")
    return name


def release_names(paths):
    if not os.path.isdir(paths.releases):
        return []
    return sorted(n for n in os.listdir(paths.releases) if vumi_settings.RELEASE_RE.match(n))


def write_manifest(paths, name, runas, manifest):
    vumi_files.write_atomic(paths.manifest(name), json.dumps(manifest, indent=2, sort_keys=True) + "\n", runas)


def current_release_safe(paths):
    with contextlib.suppress(CommandExecutionError):
        return current_release(paths)
    return None


def resolve_release(paths, release):
    if release is None:
        name = current_release(paths)
        if name is None:
            raise CommandExecutionError(f"{paths.root} has no current release; deploy first")
        return name
    if not os.path.isdir(paths.release(release)):
        raise SaltInvocationError(f"unknown release {release!r} in {paths.releases}")
    return release
