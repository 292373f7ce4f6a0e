import secrets
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.models import User

DEV_OPERATOR_EMAIL = "operator@localhost"


class Command(BaseCommand):
    help = (
        "Development only: create the operator account operator@localhost on first run and "
        "print its password once."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("create_dev_operator runs only with DJANGO_DEBUG=1.")
        if User.objects.filter(email__iexact=DEV_OPERATOR_EMAIL).exists():
            self.stdout.write(
                f"Operator sign-in: {DEV_OPERATOR_EMAIL} (password shown on the first run; "
                f"forgot it? .venv/bin/python manage.py changepassword {DEV_OPERATOR_EMAIL})"
            )
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(email=DEV_OPERATOR_EMAIL, password=password)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created the development operator {DEV_OPERATOR_EMAIL} with password "
                f"{password}  (shown once; it is not stored anywhere in plain text)"
            )
        )
