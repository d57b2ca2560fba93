"""WSGI config for sampleapp: ``gunicorn sampleapp.wsgi`` serves ``application``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "environments.default")

application = get_wsgi_application()
