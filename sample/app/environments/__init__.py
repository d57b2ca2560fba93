"""Settings modules, one per environment (Vumi's convention): DJANGO_SETTINGS_MODULE=environments.<env>."""
