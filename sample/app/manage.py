#!/usr/bin/env python3
"""Django's command-line utility for administrative tasks (as ``django-admin startproject`` writes it)."""

import os
import sys


def main():
    # Vumi's convention: one settings module per environment under environments/;
    # the deploy sets DJANGO_SETTINGS_MODULE when the release has the environment's own
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "environments.default")
    try:
        from django.core.management import execute_from_command_line
    except ImportError as exc:
        raise ImportError(
            "Couldn't import Django. Are you sure it's installed and "
            "available on your PYTHONPATH environment variable? Did you "
            "forget to activate a virtual environment?"
        ) from exc
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
