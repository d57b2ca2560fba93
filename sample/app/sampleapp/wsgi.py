"""WSGI entry point of the sample app: ``sampleapp.wsgi:application``.

The settings module is taken from DJANGO_SETTINGS_MODULE (manage.py sets
it from ``--settings``), defaulting to ``environments.default``.
"""

import importlib
import json
import os
import sys
import time
import urllib.parse

# Imported at module load on purpose: the app must refuse to start when
# its virtualenv lacks the library.
import vumi_sample_lib

DEFAULT_SETTINGS = "environments.default"

# The code folder is the directory holding manage.py (the parent of this
# package); a release keeps its REVISION file next to the code folder.
CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVISION_FILE = os.path.join(os.path.dirname(CODE_DIR), "REVISION")

if CODE_DIR not in sys.path:
    sys.path.insert(0, CODE_DIR)

SETTINGS_MODULE = os.environ.get("DJANGO_SETTINGS_MODULE") or DEFAULT_SETTINGS
settings = importlib.import_module(SETTINGS_MODULE)


def _revision():
    revision = os.environ.get("VUMI_REVISION")
    if revision:
        return revision
    try:
        with open(REVISION_FILE, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _port(environ):
    port = os.environ.get("VUMI_PORT") or environ.get("SERVER_PORT")
    try:
        return int(port)
    except (TypeError, ValueError):
        return port


def _status(environ):
    return {
        "app": "sampleapp",
        "env": os.environ.get("VUMI_ENV"),
        "release": os.environ.get("VUMI_RELEASE"),
        "revision": _revision(),
        "port": _port(environ),
        "pid": os.getpid(),
        "settings": SETTINGS_MODULE,
        "greeting": getattr(settings, "GREETING", None),
        "lib": vumi_sample_lib.VERSION,
    }


def _respond(start_response, status, content_type, body, environ):
    body = body.encode("utf-8")
    start_response(status, [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
    ])
    return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def application(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        if path in ("/", "/health"):
            return _respond(start_response, "405 Method Not Allowed",
                            "text/plain", "method not allowed\n", environ)
        return _respond(start_response, "404 Not Found", "text/plain",
                        "not found\n", environ)
    if path == "/":
        body = json.dumps(_status(environ), sort_keys=True) + "\n"
        return _respond(start_response, "200 OK", "application/json",
                        body, environ)
    if path == "/health":
        # a release can be made unhealthy on purpose (tests of the health
        # gate): commit a file HEALTH_FAIL next to manage.py
        if os.path.exists(os.path.join(CODE_DIR, "HEALTH_FAIL")):
            return _respond(start_response, "500 Internal Server Error",
                            "text/plain", "unhealthy: HEALTH_FAIL\n", environ)
        return _respond(start_response, "200 OK", "text/plain", "ok",
                        environ)
    if path == "/slow":
        # a request that takes a while (?seconds=N, at most 30): what a
        # graceful stop must let finish
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        try:
            seconds = min(max(float(query.get("seconds", ["1"])[0]), 0.0), 30.0)
        except ValueError:
            seconds = 1.0
        time.sleep(seconds)
        body = json.dumps(dict(_status(environ), slept=seconds), sort_keys=True) + "\n"
        return _respond(start_response, "200 OK", "application/json",
                        body, environ)
    return _respond(start_response, "404 Not Found", "text/plain",
                    "not found\n", environ)
