from __future__ import annotations

from django.db import IntegrityError, transaction

from accounts.models import User, normalize_email


class AccountError(Exception):
    """An expected failure with a message fit to show the user."""


def user_create(*, email: str, password: str) -> User:
    """Create an account. Raises AccountError if the email is taken in any letter case.

    The form checks first; the unique index on lower(email) settles the race of two sign-ups
    at once.
    """
    try:
        with transaction.atomic():
            return User.objects.create_user(email=normalize_email(email), password=password)
    except IntegrityError as error:
        raise AccountError("An account with this email address already exists.") from error


def user_update_profile(*, user: User, display_name: str) -> User:
    user.display_name = display_name.strip()
    user.save(update_fields=["display_name"])
    return user
