"""
The sample site's pages: ``/`` tells which release, revision and settings serve it (JSON);
``/health`` checks the database; ``/visits/`` writes and reads a row; ``/slow`` takes a while; ``/noise`` writes to the log.
"""

import os
import sys
import time

import django
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.csrf import csrf_exempt

import vumi_sample_lib
from pages.models import Visit

CODE_DIR = settings.BASE_DIR


def _release_dir():
    # the deploy puts the code in releases/<name>/<app>/: the release is its parent
    return os.path.dirname(os.path.realpath(CODE_DIR))


def _revision():
    if os.environ.get("VUMI_REVISION"):
        return os.environ["VUMI_REVISION"]
    try:
        with open(os.path.join(_release_dir(), "REVISION"), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def _status(request):
    port = os.environ.get("VUMI_PORT") or request.META.get("SERVER_PORT")
    return {
        "app": "sampleapp",
        "env": os.environ.get("VUMI_ENV"),
        "release": os.path.basename(_release_dir()),
        "revision": _revision(),
        "port": int(port) if str(port).isdigit() else port,
        "pid": os.getpid(),
        "ppid": os.getppid(),  # under gunicorn: its master, the process supervisor runs
        "settings": os.environ.get("DJANGO_SETTINGS_MODULE"),
        "greeting": getattr(settings, "GREETING", None),
        "lib": vumi_sample_lib.VERSION,
        "django": django.get_version(),
    }


def _get_only(view):
    def wrapped(request):
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        return view(request)

    return wrapped


@_get_only
def status(request):
    return JsonResponse(_status(request))


@_get_only
def health(request):
    # a release can be made unhealthy on purpose (tests of the health gate):
    # commit a file HEALTH_FAIL next to manage.py
    if os.path.exists(os.path.join(CODE_DIR, "HEALTH_FAIL")):
        return HttpResponse("unhealthy: HEALTH_FAIL\n", status=500, content_type="text/plain")
    with connection.cursor() as cursor:  # the database answers
        cursor.execute("SELECT 1")
    return HttpResponse("ok", content_type="text/plain")


@_get_only
def slow(request):
    try:
        seconds = min(max(float(request.GET.get("seconds", "1")), 0.0), 30.0)
    except ValueError:
        seconds = 1.0
    time.sleep(seconds)
    return JsonResponse(dict(_status(request), slept=seconds))


@_get_only
def noise(request):
    """Write ``kb`` KiB to the log (stderr): what the tests of log rotation need."""
    try:
        kib = min(max(int(request.GET.get("kb", "1")), 0), 4096)
    except ValueError:
        kib = 1
    marker = request.GET.get("marker", "noise")[:100]
    sys.stderr.write(f"{marker} " + "x" * (1024 * kib) + "\n")
    sys.stderr.flush()
    return HttpResponse(f"wrote {kib} KiB\n", content_type="text/plain")


@csrf_exempt
def visits(request):
    Visit.objects.create(path=request.path)
    return JsonResponse(
        {
            "visits": Visit.objects.count(),
            "database": connection.vendor,
            "release": os.path.basename(_release_dir()),
        }
    )
