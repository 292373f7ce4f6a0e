"""Reads for the usage pages. Pages read the daily rollups, never scan events."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from django.db.models import OuterRef, Subquery, Sum
from django.utils import timezone

from accounts.models import User
from usage.models import (
    NO_KEY,
    MonthlySpend,
    RollupStamp,
    SpendCap,
    UsageConversationDaily,
    UsageDaily,
    UsageEvent,
)
from usage.services import month_start, next_month_start

MAX_RANGE_DAYS = 366

# Conversations, and their sealed titles, belong to the chat app, which sits above usage: it
# tells usage how to open them when it starts (chat.apps.ChatConfig.ready).
TitleSource = Callable[[User, list[Any]], dict[Any, str]]
_title_source: TitleSource | None = None


def conversation_titles_from(source: TitleSource) -> None:
    """Name the function that opens the owner's conversation titles for the usage pages."""
    global _title_source
    _title_source = source


def conversation_titles(*, owner: User, ids: list[Any]) -> dict[Any, str]:
    """Opened titles of the owner's conversations among `ids`; a conversation left out of
    the answer is one that no longer exists (or no app provides titles)."""
    if _title_source is None:
        return {}
    return _title_source(owner, ids)


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
    # Turns, and turns of unknown price: a day's cost of a model none of whose turns had a
    # price is unknown, not $0 (`usage.services.cost_summary`).
    turns: dict[str, list[int]] = field(default_factory=dict)
    unpriced: dict[str, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class UsageSummary:
    """What the usage page shows of a period's rollups: totals, tables and the day series."""

    totals: Totals
    by_model: list[dict[str, object]]
    by_key: list[dict[str, object]]
    series: DaySeries


_SUMMARY_FIELDS = (
    "turns",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_micro",
    "unpriced_turns",
)


def usage_summary(*, owner: User, period: Period) -> UsageSummary:
    """Totals, totals by model and by key (biggest cost first) and the per-day series of a
    period, from one read of its rollup rows (one per day, key and model)."""
    rows = _rollups(owner, period).values_list(
        "day", "preset", "model", "key_id", "key_label", *_SUMMARY_FIELDS
    )
    totals = Totals()
    by_model: dict[tuple[str, str], dict[str, object]] = {}
    by_key: dict[tuple[uuid.UUID, str], dict[str, object]] = {}
    days = period.days
    index = {day: i for i, day in enumerate(days)}
    cost: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    tokens: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    turns: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    unpriced: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    for day, preset, model, key_id, key_label, *values in rows:
        counts = dict(zip(_SUMMARY_FIELDS, values, strict=True))
        for name, value in counts.items():
            setattr(totals, name, getattr(totals, name) + value)
        for groups, group, labels in (
            (by_model, (preset, model), {"preset": preset, "model": model}),
            (by_key, (key_id, key_label), {"key_id": key_id, "key_label": key_label}),
        ):
            row = groups.get(group)
            if row is None:
                row = groups[group] = {**labels, **dict.fromkeys(_SUMMARY_FIELDS, 0)}
            for name, value in counts.items():
                row[name] += value
        cost[model][index[day]] += counts["cost_micro"]
        tokens[model][index[day]] += counts["input_tokens"] + counts["output_tokens"]
        turns[model][index[day]] += counts["turns"]
        unpriced[model][index[day]] += counts["unpriced_turns"]
    for row in by_key.values():
        if row["key_id"] == NO_KEY:
            row["key_label"] = "No key (failed before a call)"
    models = sorted(cost, key=lambda m: -sum(cost[m]) - sum(tokens[m]) / 1e9)
    return UsageSummary(
        totals=totals,
        by_model=_biggest_first(by_model.values()),
        by_key=_biggest_first(by_key.values()),
        series=DaySeries(days, models, dict(cost), dict(tokens), dict(turns), dict(unpriced)),
    )


def _biggest_first(rows: Iterable[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(rows, key=lambda row: (-row["cost_micro"], -row["turns"]))  # type: ignore[operator]


def rollup_stamp(*, owner: User) -> uuid.UUID | None:
    """The owner's current rollup stamp (None before their first recorded turn).

    Read it before the rollups it stands for: a turn committed in between then shows in
    the figures and changes the stamp, so whatever is cached under this stamp is never
    older than the stamp says.
    """
    return RollupStamp.objects.filter(owner=owner).values_list("stamp", flat=True).first()


@dataclass(frozen=True)
class TurnCost:
    """What a turn cost by the usage ledger: micro-dollars, None when its model had no price
    (never $0 for "unknown"); `estimated` when its tokens were this server's estimate."""

    micro: int | None
    estimated: bool = False

    @classmethod
    def total(cls, costs: Iterable[TurnCost]) -> TurnCost:
        """The cost of several calls shown as one (a reply and its continuations): unknown if
        any part's price is unknown, estimated if any part's tokens were."""
        costs = list(costs)
        micros = [cost.micro for cost in costs]
        return cls(
            micro=None if any(m is None for m in micros) else sum(m or 0 for m in micros),
            estimated=any(cost.estimated for cost in costs),
        )


def turn_costs(*, owner: User, message_ids: Iterable[Any]) -> dict[uuid.UUID, TurnCost]:
    """The recorded cost of each of the owner's turns among `message_ids` (one usage event
    per provider call); a turn with no event yet is left out."""
    rows = (
        UsageEvent.objects.for_owner(owner)
        .filter(message_id__in=list(message_ids))
        .values_list("message_id", "cost_micro", "tokens_estimated")
    )
    return {
        message_id: TurnCost(micro=cost, estimated=estimated)
        for message_id, cost, estimated in rows
    }


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
        # "chat" (a reply) or "title" (the conversation's title, written by its model; the
        # message column is then the title call's id).
        "purpose",
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
            event.purpose,
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

    @property
    def for_all_keys(self) -> bool:
        return self.cap.key_id == NO_KEY


def cap_statuses(*, owner: User, key_id: uuid.UUID | None = None) -> list[CapStatus]:
    """This month's caps and how much of each is spent; with `key_id`, only the caps a turn
    with that key is held to (the account's and the key's own)."""
    month = month_start(timezone.localdate())
    spent = MonthlySpend.objects.filter(owner=owner, key_id=OuterRef("key_id"), month=month)
    caps = (
        SpendCap.objects.for_owner(owner)
        .annotate(spent=Subquery(spent.values("spent_micro")[:1]))
        .order_by("key_id")
    )
    if key_id is not None:
        caps = caps.filter(key_id__in=[NO_KEY, key_id])
    statuses = []
    for cap in caps:
        used = cap.spent or 0  # type: ignore[attr-defined]  # annotated above
        statuses.append(CapStatus(cap, used, used / cap.limit_micro, next_month_start(month)))
    return statuses
