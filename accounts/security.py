"""Who is asking: the client address behind trusted proxies, and a small Redis rate limit.

SECURITY: the client address decides brute-force lock-outs (django-axes), so it must not be
something the client can choose. With `BYOK_TRUSTED_PROXY_COUNT = 0` X-Forwarded-For is
ignored; with N proxies the address is the Nth entry from the right, the one the outermost
trusted proxy wrote. Whatever a client puts in front of that is never read.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math

from django.conf import settings
from django.http import HttpRequest
from redis import RedisError

from accounts.models import normalize_email
from core.ratelimit import window_hit


def _valid_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(request: HttpRequest) -> str | None:
    """The client's IP address, honouring exactly `BYOK_TRUSTED_PROXY_COUNT` proxies."""
    remote = _valid_ip(request.META.get("REMOTE_ADDR") or "")
    proxies = settings.BYOK_TRUSTED_PROXY_COUNT
    if proxies <= 0:
        return remote
    forwarded = [
        part.strip()
        for part in (request.META.get("HTTP_X_FORWARDED_FOR") or "").split(",")
        if part.strip()
    ]
    if len(forwarded) < proxies:
        # Fewer entries than proxies: the request did not come through all of them.
        return remote
    return _valid_ip(forwarded[-proxies]) or remote


def user_agent(request: HttpRequest) -> str:
    return (request.META.get("HTTP_USER_AGENT") or "")[:300]


def rate_limit_hit(scope: str, identity: str, *, limit: int, window_seconds: int) -> int:
    """Count one attempt; return 0 if allowed, else the seconds to wait.

    The window is keyed by a hash of the identity (no email address in Redis). Fails open
    when Redis is down: the limit is a brake, and the login has its own.
    """
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]
    try:
        return window_hit(
            f"byok:ratelimit:{scope}:{digest}", limit=limit, window_seconds=window_seconds
        )
    except RedisError:
        return 0


def wait_text(seconds: float) -> str:
    """“3 minutes”, “1 minute”, “40 seconds”."""
    if seconds >= 60:
        minutes = math.ceil(seconds / 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    whole = max(math.ceil(seconds), 1)
    return f"{whole} second{'s' if whole != 1 else ''}"


def axes_username(request: HttpRequest, credentials: dict[str, object] | None) -> str:
    """The account a login attempt is about, normalised so letter case cannot dodge a lock."""
    value = (credentials or {}).get("username")
    if value is None:
        value = request.POST.get("username", "") if request.method == "POST" else ""
    return normalize_email(str(value))[:254]


def lockout_seconds_left(request: HttpRequest, username: str) -> float:
    """Seconds until the newest attempt behind a lock-out is out of the cool-off window."""
    from axes.helpers import get_cool_off
    from axes.models import AccessAttempt
    from django.db.models import Q
    from django.utils import timezone

    cool_off = get_cool_off(request)
    if cool_off is None:
        return 0.0
    ip = client_ip(request)
    condition = Q(ip_address=ip) if ip else Q(pk__in=[])
    if username:
        condition |= Q(username=username)
    latest = AccessAttempt.objects.filter(condition).order_by("-attempt_time").first()
    if latest is None:
        return cool_off.total_seconds()
    left = (latest.attempt_time + cool_off - timezone.now()).total_seconds()
    return max(left, 1.0)
