"""WSGI config for sampleapp: ``gunicorn sampleapp.wsgi`` serves ``application``."""

import os
import pathlib

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "environments.default")

# A commit can break the app on some ports only (a host's setting the new code
# cannot take): a ``FAIL_ON_PORTS`` file beside manage.py listing this port.
# The fleet tests use it for a release that passes its health check (on a spare
# port) and then does not start on one host's real port.
_fail_on = pathlib.Path(__file__).resolve().parents[1] / "FAIL_ON_PORTS"
if _fail_on.is_file() and os.environ.get("VUMI_PORT", "") in _fail_on.read_text().split():
    raise RuntimeError(f"this release does not start on port {os.environ['VUMI_PORT']} ({_fail_on})")

application = get_wsgi_application()

# A commit can also start well and fail later (a leak, a pool that runs dry): on the
# ports a ``FAIL_LATER_ON_PORTS`` file lists, every request from 5 s after the start
# on is answered 500. The fleet tests' canary watches for it.
_fail_later = pathlib.Path(__file__).resolve().parents[1] / "FAIL_LATER_ON_PORTS"
if _fail_later.is_file() and os.environ.get("VUMI_PORT", "") in _fail_later.read_text().split():
    import time

    _started, _serve = time.monotonic(), application

    def application(environ, start_response):
        if time.monotonic() - _started < 5:
            return _serve(environ, start_response)
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"failing later on purpose\n"]
