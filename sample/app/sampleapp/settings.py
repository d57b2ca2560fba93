"""
Settings shared by every environment (environments/<env>.py import these and override).

The database comes from ``DATABASE_URL`` (``postgres://user:password@host:port/name``, as
the deploy's pillar ``env`` hands it over), else a SQLite file in ``tmp/``, which the
deploy links to the environment's shared folder so that it outlives a release.
"""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent


def database(url):
    if not url:
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "tmp" / "sample.sqlite"}
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL: unsupported scheme {parts.scheme!r} (postgres:// only)")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


SECRET_KEY = os.environ.get("SECRET_KEY", "sample-app-insecure-key: set SECRET_KEY in pillar env")
DEBUG = os.environ.get("DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "pages",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "sampleapp.urls"
WSGI_APPLICATION = "sampleapp.wsgi.application"
TEMPLATES = []

DATABASES = {"default": database(os.environ.get("DATABASE_URL"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "public" / "static"  # collectstatic's output, served by nginx
MEDIA_URL = "media/"
MEDIA_ROOT = BASE_DIR / "public" / "media"  # uploads: a shared folder (shared_dirs: [public/media])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

GREETING = "hello from default"
