from __future__ import annotations

import csv
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from typing import TypeVar

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.http import AuthenticatedRequest
from accounts.models import User
from accounts.sudo import sudo_is_active, sudo_url
from keys.models import ProviderKey
from usage import selectors, services
from usage.charts import chart_html, stacked_bars
from usage.forms import CapForm, UsagePreferencesForm
from usage.models import NO_KEY, SpendCap, UsageSettings
from usage.services import BudgetError, format_usd

_T = TypeVar("_T")


def _period(request: AuthenticatedRequest) -> tuple[selectors.Period, str | None]:
    try:
        return (
            selectors.parse_period(
                request.GET.get("period"), request.GET.get("start"), request.GET.get("end")
            ),
            None,
        )
    except selectors.PeriodError as error:
        return selectors.parse_period("month"), str(error)


def _tokens(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:,}"


# Rendered fragments of the usage page are cached under the owner's rollup stamp, which
# every recorded turn renews: the first request after a turn misses and shows it. Bump the
# version when a fragment's template or data change shape.
_FRAGMENT_CACHE_VERSION = 1
_FRAGMENT_CACHE_SECONDS = 24 * 3600


def _cached(key: str | None, build: Callable[[], _T]) -> _T:
    if key is None:  # no stamp: no turn recorded yet, nothing worth keeping
        return build()
    value = cache.get(key)
    if value is None:
        value = build()
        cache.set(key, value, _FRAGMENT_CACHE_SECONDS)
    return value


def _link(name: str, sample: str) -> Callable[[object], str]:
    """A URL maker for the view `name` with one argument, reversed once: a page of a few
    hundred rows would otherwise spend more time reversing links than anything else."""
    prefix, _, suffix = reverse(name, args=[sample]).partition(sample)
    return lambda value: f"{prefix}{value}{suffix}"


def _summary(owner: User, period: selectors.Period) -> tuple[str, list[dict[str, object]]]:
    """The period's figures as HTML (totals, charts, tables by day, model and key), and its
    rows by conversation (rendered apart: their titles are opened on every request)."""
    summary = selectors.usage_summary(owner=owner, period=period)
    series = summary.series
    day_url = _link("usage:day", "2000-01-01")
    key_url = _link("keys:detail", str(NO_KEY))
    daily_rows = []
    for index, day in enumerate(series.days):
        url = day_url(day)
        for model in series.models:
            cost, tokens = series.cost[model][index], series.tokens[model][index]
            turns, unpriced = series.turns[model][index], series.unpriced[model][index]
            if cost or tokens or turns:
                daily_rows.append(
                    {
                        "day": day,
                        "model": model,
                        "cost": cost,
                        "turns": turns,
                        "unpriced_turns": unpriced,
                        "tokens": tokens,
                        "url": url,
                    }
                )
    for row in summary.by_key:
        row["url"] = key_url(row["key_id"]) if row["key_id"] != NO_KEY else ""
    html = render_to_string(
        "usage/_summary.html",
        {
            "totals": summary.totals,
            "by_model": summary.by_model,
            "by_key": summary.by_key,
            "daily_rows": daily_rows,
            "cost_chart": chart_html(
                stacked_bars(
                    title="Cost per day by model",
                    days=series.days,
                    series=series.cost,
                    order=series.models,
                    fmt=format_usd,
                )
            ),
            "token_chart": chart_html(
                stacked_bars(
                    title="Tokens per day by model",
                    days=series.days,
                    series=series.tokens,
                    order=series.models,
                    fmt=_tokens,
                )
            ),
        },
    )
    conversation_url = _link("chat:conversation", str(NO_KEY))
    conversations = selectors.usage_by_conversation(owner=owner, period=period)
    for row in conversations:
        row["url"] = conversation_url(row["conversation_id"])
    return html, conversations


@login_required
@require_GET
def usage_home(request: AuthenticatedRequest) -> HttpResponse:
    period, period_error = _period(request)
    owner = request.user
    stamp = selectors.rollup_stamp(owner=owner)  # before the rollups: see rollup_stamp
    key = None
    if stamp is not None:
        key = (
            f"usage:home:{_FRAGMENT_CACHE_VERSION}:{owner.pk}:{stamp}:"
            f"{period.start:%Y%m%d}:{period.end:%Y%m%d}"
        )
    summary_html, conversations = _cached(key, lambda: _summary(owner, period))
    # Titles are sealed by the app that owns conversations (see selectors.conversation_titles).
    # Opened on every request, so a renamed or deleted conversation shows at once; the
    # table is cached per set of titles.
    titles = selectors.conversation_titles(
        owner=owner, ids=[row["conversation_id"] for row in conversations]
    )
    rows = [
        {**row, "title": titles[row["conversation_id"]]}
        if row["conversation_id"] in titles
        else {**row, "title": "Deleted conversation", "url": ""}  # nothing left to open
        for row in conversations
    ]
    titles_digest = hashlib.sha256(json.dumps([row["title"] for row in rows]).encode())
    conversations_html = _cached(
        key and f"{key}:conversations:{titles_digest.hexdigest()}",
        lambda: render_to_string("usage/_conversations.html", {"by_conversation": rows}),
    )
    context = {
        "period": period,
        "period_error": period_error,
        # Both rendered from our own templates, which escape what they show.
        "summary": mark_safe(summary_html),  # noqa: S308
        "conversations": mark_safe(conversations_html),  # noqa: S308
        "caps": selectors.cap_statuses(owner=owner),
    }
    return render(request, "usage/home.html", context)


@login_required
@require_GET
def usage_day(request: AuthenticatedRequest, day: str) -> HttpResponse:
    try:
        when = date.fromisoformat(day)
    except ValueError:
        raise Http404("Not a date.") from None
    events = selectors.day_events(owner=request.user, day=when)
    return render(request, "usage/day.html", {"day": when, "events": events})


class _Echo:
    def write(self, value: str) -> str:
        return value


@login_required
@require_GET
def usage_export(request: AuthenticatedRequest) -> StreamingHttpResponse:
    """The user's own usage events as CSV, streamed (no whole file in memory)."""
    period, _ = _period(request)
    writer = csv.writer(_Echo())
    rows: Iterator[str] = (
        writer.writerow(row)
        for row in selectors.usage_csv_rows(request.user, period.start, period.end)
    )
    response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
    filename = f"byok-usage-{period.start:%Y%m%d}-{period.end:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
@require_GET
def key_usage(request: AuthenticatedRequest, key_id: uuid.UUID) -> HttpResponse:
    """htmx fragment on a key's page: this month's usage of the key and its cap."""
    key = get_object_or_404(ProviderKey.objects.for_owner(request.user), pk=key_id)
    period = selectors.parse_period("month")
    totals = selectors.usage_totals(owner=request.user, period=period, key_id=key.pk)
    cap = next(
        (c for c in selectors.cap_statuses(owner=request.user) if c.cap.key_id == key.pk), None
    )
    return render(
        request,
        "usage/_key_usage.html",
        {"key": key, "totals": totals, "cap": cap, "period": period, "form": CapForm()},
    )


@login_required
@require_http_methods(["GET", "POST"])
def caps(request: AuthenticatedRequest) -> HttpResponse:
    """Spend caps: the account-wide one and one per key, plus the unknown-price switch."""
    preferences, _ = UsageSettings.objects.get_or_create(owner=request.user)
    context = {
        "caps": selectors.cap_statuses(owner=request.user),
        "keys": ProviderKey.objects.for_owner(request.user).usable(),
        "form": CapForm(),
        "preferences": UsagePreferencesForm(
            initial={"allow_unknown_prices": preferences.allow_unknown_prices}
        ),
        "NO_KEY": NO_KEY,
    }
    return render(request, "usage/caps.html", context)


def _scope(request: AuthenticatedRequest, scope: str) -> uuid.UUID | None:
    if scope == "all":
        return None
    try:
        key_id = uuid.UUID(scope)
    except ValueError:
        raise Http404("No such key.") from None
    return get_object_or_404(ProviderKey.objects.for_owner(request.user), pk=key_id).pk


@login_required
@require_POST
def cap_set(request: AuthenticatedRequest, scope: str) -> HttpResponse:
    key_id = _scope(request, scope)
    form = CapForm(request.POST)
    if not form.is_valid():
        messages.error(
            request, " ".join(str(e) for e in form.errors.get("limit", ["Check the amount."]))
        )
        return redirect("usage:caps")
    limit = form.cleaned_data["limit"]
    current = SpendCap.objects.for_owner(request.user).filter(key_id=key_id or NO_KEY).first()
    if (
        current is not None
        and limit > current.limit_micro
        and not form.cleaned_data["confirm_raise"]
    ):
        messages.error(
            request,
            f"Raising a cap from {format_usd(current.limit_micro)} to {format_usd(limit)} "
            "needs the “Yes, raise the cap” box ticked.",
        )
        return redirect("usage:caps")
    if current is not None and limit > current.limit_micro and not sudo_is_active(request):
        messages.error(request, "Confirm your password to raise a cap, then try again.")
        return redirect(sudo_url(reverse("usage:caps")))
    try:
        services.spend_cap_set(owner=request.user, key_id=key_id, limit_micro=limit)
    except BudgetError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Monthly cap set to {format_usd(limit)}.")
    return redirect("usage:caps")


@login_required
@require_POST
def cap_remove(request: AuthenticatedRequest, scope: str) -> HttpResponse:
    if not sudo_is_active(request):
        messages.error(request, "Confirm your password to remove a cap, then try again.")
        return redirect(sudo_url(reverse("usage:caps")))
    services.spend_cap_remove(owner=request.user, key_id=_scope(request, scope))
    messages.success(request, "Cap removed.")
    return redirect("usage:caps")


@login_required
@require_POST
def preferences_set(request: AuthenticatedRequest) -> HttpResponse:
    form = UsagePreferencesForm(request.POST)
    form.is_valid()
    services.usage_settings_set(
        owner=request.user, allow_unknown_prices=bool(form.cleaned_data.get("allow_unknown_prices"))
    )
    messages.success(request, "Preferences saved.")
    return redirect("usage:caps")
