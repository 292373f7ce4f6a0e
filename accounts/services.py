from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest
from django.utils import timezone

from accounts.models import AuditEvent, User, normalize_email


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


def audit_record(
    *,
    owner: User,
    action: str,
    actor: User | None = None,
    target_id: str = "",
    target_label: str = "",
    details: dict[str, object] | None = None,
    ip_address: str | None = None,
) -> AuditEvent:
    """Append one event to `owner`'s security log. `details` must hold no secret."""
    return AuditEvent.objects.create(
        owner=owner,
        actor=actor,
        action=action,
        target_id=target_id,
        target_label=target_label[:200],
        details=details or {},
        ip_address=ip_address,
    )


def audit_count_use(*, owner: User, action: str, target_id: str, target_label: str) -> None:
    """Count one more use of a target today, in a single row per target and day."""
    today = timezone.now().date()
    updated = AuditEvent.objects.filter(
        owner=owner, action=action, target_id=target_id, day=today
    ).update(count=F("count") + 1, created_at=timezone.now())
    if updated:
        return
    try:
        with transaction.atomic():
            AuditEvent.objects.create(
                owner=owner,
                action=action,
                target_id=target_id,
                target_label=target_label,
                day=today,
            )
    except IntegrityError:  # another worker created today's row first
        AuditEvent.objects.filter(
            owner=owner, action=action, target_id=target_id, day=today
        ).update(count=F("count") + 1)


def client_ip(request: HttpRequest) -> str | None:
    """The client's address as the ASGI server reports it (uvicorn applies proxy headers)."""
    return request.META.get("REMOTE_ADDR") or None
