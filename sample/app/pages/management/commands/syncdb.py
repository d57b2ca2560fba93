"""``./manage.py syncdb``: the Fabric-era guide's command, now Django's ``migrate``."""

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connection


class Command(BaseCommand):
    help = "Apply the migrations (what syncdb did before Django 1.9)."

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=options["verbosity"])
        self.stdout.write(f"Synced database {connection.settings_dict['NAME']} ({connection.vendor})")
