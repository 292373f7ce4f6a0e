from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from chat.selectors import conversation_list
from core.health import health_report
from keys.models import ProviderKey
from usage.selectors import cap_statuses, parse_period, usage_totals


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
        "recent": conversation_list(owner=user, limit=5),
        "month": usage_totals(owner=user, period=parse_period("month")),
        "caps": cap_statuses(owner=user),
    }
    return render(request, "home.html", context)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Database, Redis and worker status: 200 when all are up, 503 naming what is down;
    within BYOK_HEALTHZ_TIMEOUT seconds whatever is down (`core.health`)."""
    report = health_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
