"""E-mails about spend and keys, at most once per event per day."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.utils import timezone

from accounts.models import User
from core.redis import get_redis

logger = logging.getLogger(__name__)


def notify_once_a_day(*, user: User, event: str, subject: str, body: str) -> bool:
    """Send `subject`/`body` to the user unless this `event` was sent today. True if sent."""
    marker = f"byok:mail:{user.pk}:{event}:{timezone.localdate().isoformat()}"
    if not get_redis().set(marker, "1", nx=True, ex=60 * 60 * 26):
        return False
    send_mail(
        f"[{settings.SITE_NAME}] {subject}",
        body,
        settings.DEFAULT_FROM_EMAIL,
        [user.email],
        fail_silently=False,
    )
    return True
