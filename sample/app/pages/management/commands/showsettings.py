import json
import os

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print the settings module and GREETING as JSON."

    def handle(self, *args, **options):
        self.stdout.write(
            json.dumps(
                {
                    "settings": os.environ.get("DJANGO_SETTINGS_MODULE"),
                    "greeting": getattr(settings, "GREETING", None),
                },
                sort_keys=True,
            )
        )
