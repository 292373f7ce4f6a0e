"""Reads for the usage pages. Pages read the daily rollups, never scan events."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

from django.db.models import Sum
from django.utils import timezone

from accounts.models import User
from usage.models import (
    NO_KEY,
    MonthlySpend,
    SpendCap,
    UsageConversationDaily,
    UsageDaily,
    UsageEvent,
)
from usage.services import month_start, next_month_start

MAX_RANGE_DAYS = 366


class PeriodError(ValueError):
    """A period a user cannot ask for, with a message saying why."""


@dataclass(frozen=True)
class Period:
    start: date
    end: date  # inclusive
    label: str
    slug: str

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]


def parse_period(slug: str | None, start: str | None = None, end: str | None = None) -> Period:
    """`month` (default), `30d`, or `custom` with ISO dates; raises PeriodError."""
    today = timezone.localdate()
    if slug == "30d":
        return Period(today - timedelta(days=29), today, "Last 30 days", "30d")
    if slug == "custom":
        try:
            first = date.fromisoformat(start or "")
            last = date.fromisoformat(end or "")
        except ValueError:
            raise PeriodError("Enter both dates as YYYY-MM-DD.") from None
        if first > last:
            raise PeriodError("The start date is after the end date.")
        if first > today:
            raise PeriodError("That range is in the future: there is no usage yet.")
        last = min(last, today)
        if (last - first).days >= MAX_RANGE_DAYS:
            raise PeriodError("Pick a range of at most one year.")
        return Period(first, last, f"{first:%-d %b %Y} to {last:%-d %b %Y}", "custom")
    return Period(month_start(today), today, f"{today:%B %Y}", "month")


@dataclass
class Totals:
    turns: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_micro: int = 0
    unpriced_turns: int = 0


def _rollups(owner: User, period: Period, key_id: uuid.UUID | None = None):
    rows = UsageDaily.objects.for_owner(owner).filter(day__gte=period.start, day__lte=period.end)
    if key_id is not None:
        rows = rows.filter(key_id=key_id)
    return rows


_SUMS = {
    "turns": Sum("turns"),
    "errors": Sum("errors"),
    "input_tokens": Sum("input_tokens"),
    "output_tokens": Sum("output_tokens"),
    "cached_tokens": Sum("cached_tokens"),
    "cost_micro": Sum("cost_micro"),
    "unpriced_turns": Sum("unpriced_turns"),
}


def usage_totals(*, owner: User, period: Period, key_id: uuid.UUID | None = None) -> Totals:
    values = _rollups(owner, period, key_id).aggregate(**_SUMS)
    return Totals(**{name: value or 0 for name, value in values.items()})


def usage_by(*, owner: User, period: Period, field: str) -> list[dict[str, object]]:
    """Totals grouped by `model` or `key` (with the key's label), biggest cost first."""
    group = ["preset", "model"] if field == "model" else ["key_id", "key_label"]
    rows = (
        _rollups(owner, period).values(*group).annotate(**_SUMS).order_by("-cost_micro", "-turns")
    )
    result = []
    for row in rows:
        if field == "key" and row["key_id"] == NO_KEY:
            row["key_label"] = "No key (failed before a call)"
        result.append(row)
    return result


def usage_by_conversation(
    *, owner: User, period: Period, limit: int = 50
) -> list[dict[str, object]]:
    return list(
        UsageConversationDaily.objects.for_owner(owner)
        .filter(day__gte=period.start, day__lte=period.end)
        .values("conversation_id")
        .annotate(
            turns=Sum("turns"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost_micro=Sum("cost_micro"),
            unpriced_turns=Sum("unpriced_turns"),
        )
        .order_by("-cost_micro", "-turns")[:limit]
    )


@dataclass(frozen=True)
class DaySeries:
    """Per day and model: cost and tokens, for the stacked charts and their table."""

    days: list[date]
    models: list[str]
    cost: dict[str, list[int]]
    tokens: dict[str, list[int]]


def usage_by_day(*, owner: User, period: Period) -> DaySeries:
    rows = (
        _rollups(owner, period)
        .values("day", "model")
        .annotate(cost=Sum("cost_micro"), tokens=Sum("input_tokens") + Sum("output_tokens"))
    )
    days = period.days
    index = {day: i for i, day in enumerate(days)}
    cost: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    tokens: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    for row in rows:
        cost[row["model"]][index[row["day"]]] += row["cost"] or 0
        tokens[row["model"]][index[row["day"]]] += row["tokens"] or 0
    models = sorted(cost, key=lambda m: -sum(cost[m]) - sum(tokens[m]) / 1e9)
    return DaySeries(days, models, dict(cost), dict(tokens))


def day_events(*, owner: User, day: date) -> list[UsageEvent]:
    """The turns of one day (the drill-down), newest first."""
    return list(UsageEvent.objects.for_owner(owner).filter(day=day).order_by("-created_at")[:1000])


def usage_csv_rows(
    owner: User, start: date | None = None, end: date | None = None
) -> Iterator[list[object]]:
    """CSV rows of the owner's usage events (header first), streamed from the database."""
    yield [
        "time (UTC)",
        "provider",
        "model",
        "key",
        "status",
        "error",
        "input tokens",
        "cached input tokens",
        "cache write tokens",
        "output tokens",
        "reasoning tokens",
        "cost (USD)",
        "time to first token (ms)",
        "total time (ms)",
        "conversation",
        "message",
    ]
    events = UsageEvent.objects.for_owner(owner).order_by("created_at")
    if start is not None:
        events = events.filter(day__gte=start)
    if end is not None:
        events = events.filter(day__lte=end)
    for event in events.iterator(chunk_size=2000):
        yield [
            event.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            event.preset,
            event.model,
            event.key_label,
            event.status,
            event.error_kind,
            event.input_tokens,
            event.cached_tokens,
            event.cache_write_tokens,
            event.output_tokens,
            event.reasoning_tokens,
            "" if event.cost_micro is None else f"{event.cost_micro / 1_000_000:.6f}",
            event.ttft_ms if event.ttft_ms is not None else "",
            event.latency_ms if event.latency_ms is not None else "",
            event.conversation_id or "",
            event.message_id,
        ]


@dataclass(frozen=True)
class CapStatus:
    cap: SpendCap
    spent_micro: int
    share: float
    resets_on: date

    @property
    def percent(self) -> int:
        return min(100, round(self.share * 100))

    @property
    def level(self) -> str:
        return "err" if self.share >= 1 else "warn" if self.share >= 0.8 else "ok"


def cap_statuses(*, owner: User) -> list[CapStatus]:
    month = month_start(timezone.localdate())
    spent = {
        row.key_id: row.spent_micro for row in MonthlySpend.objects.filter(owner=owner, month=month)
    }
    statuses = []
    for cap in SpendCap.objects.for_owner(owner).order_by("key_id"):
        used = spent.get(cap.key_id, 0)
        statuses.append(CapStatus(cap, used, used / cap.limit_micro, next_month_start(month)))
    return statuses
