"""Small helpers the tests share: what a user would look at (HTTP answers, the tree)."""

import json
import os
import pathlib
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parent.parent


def http_get(port, path="/", timeout=5):
    """GET from the webapp on 127.0.0.1: (status, body as JSON when it is JSON, else text)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            status, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def env_root(base_dir, env="staging", app="vumi"):
    return pathlib.Path(base_dir) / app / env.replace("/", "~")


def release_dirs(base_dir, env="staging"):
    releases = env_root(base_dir, env) / "releases"
    return sorted(p.name for p in releases.iterdir()) if releases.is_dir() else []


def current_target(base_dir, env="staging"):
    link = env_root(base_dir, env) / "current"
    return os.readlink(link) if link.is_symlink() else None
