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
