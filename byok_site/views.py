from __future__ import annotations

import logging

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from chat.selectors import conversation_list
from core.heartbeat import live_workers
from core.redis import get_redis
from keys.models import ProviderKey
from usage.selectors import cap_statuses, parse_period, usage_totals

logger = logging.getLogger(__name__)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The landing page, or for a signed-in user a dashboard of keys, chats and spend."""
    if not request.user.is_authenticated:
        return render(request, "landing.html")
    user = request.user
    keys = ProviderKey.objects.for_owner(user)
    context = {
        "key_count": keys.usable().count(),
        "problem_keys": keys.filter(status__in=["invalid", "no_credit", "expired"]).count(),
        "recent": conversation_list(owner=user)[:5],
        "month": usage_totals(owner=user, period=parse_period("month")),
        "caps": cap_statuses(owner=user),
    }
    return render(request, "home.html", context)


def _check_database() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:
        logger.warning("healthz: database check failed", exc_info=True)
        return False


def _check_redis() -> bool:
    try:
        return bool(get_redis().ping())
    except Exception:
        logger.warning("healthz: redis check failed", exc_info=True)
        return False


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Database, Redis and worker status: 200 when all are up, 503 naming what is down."""
    database = _check_database()
    redis_ok = _check_redis()
    workers: list[str] = []
    if redis_ok:
        try:
            workers = live_workers()
        except Exception:
            redis_ok = False
    checks = {
        "database": "ok" if database else "down",
        "redis": "ok" if redis_ok else "down",
        "worker": "ok" if workers else "down",
    }
    down = [name for name, state in checks.items() if state != "ok"]
    body: dict[str, object] = {
        "status": "ok" if not down else "down",
        "checks": checks,
        "workers": len(workers),
    }
    if down:
        body["down"] = down
    return JsonResponse(body, status=200 if not down else 503)
