"""Settings modules, selected with ``--settings`` / DJANGO_SETTINGS_MODULE."""
