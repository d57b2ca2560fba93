from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Fail on purpose (exit code 3), for the tests of failed jobs."

    def handle(self, *args, **options):
        raise CommandError("manage.py fail: failing on purpose", returncode=3)
