from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from accounts.models import User, normalize_email


class EmailBackend(ModelBackend):
    """Signs in by email address, whatever its case.

    Runs the password hasher once even for an unknown address (as ModelBackend does), so the
    response time does not tell whether an account exists.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        email = username if username is not None else kwargs.get("email")
        if email is None or password is None:
            return None
        try:
            user = User.objects.get(email__iexact=normalize_email(email))
        except User.DoesNotExist:
            User().set_password(password)
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None
