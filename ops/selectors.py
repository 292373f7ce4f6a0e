"""Reads for the operator dashboard. Every figure comes from a rollup or an indexed count."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from accounts.models import User
from chat.models import Message
from core.heartbeat import live_workers
from core.redis import get_redis
from keys.models import ProviderKey
from usage.models import (
    LATENCY_BUCKETS_MS,
    ErrorDaily,
    LatencyDaily,
    ProviderDaily,
    UserActivity,
)

QUEUES = ("turns", "default")
CHART_DAYS = 30
WINDOW_DAYS = 7


@dataclass(frozen=True)
class Percentiles:
    preset: str
    turns: int
    ttft_p50: int | None
    ttft_p95: int | None
    total_p50: int | None
    total_p95: int | None


@dataclass(frozen=True)
class Health:
    queue_depth: dict[str, int | None]
    workers: list[str]
    oldest_queued_at: datetime | None
    oldest_queued_seconds: int | None
    stuck_turns: int
    problems: list[str]

    @property
    def queued_total(self) -> int:
        return sum(depth or 0 for depth in self.queue_depth.values())


@dataclass(frozen=True)
class Dashboard:
    today: date
    window_start: date
    chart_start: date
    users_total: int
    users_new: int
    users_active: int
    turns_today: int
    turns_window: int
    errors_window: int
    days: list[date]
    tokens_by_preset: dict[str, list[int]]
    spend_by_preset: dict[str, list[int]]
    presets: list[str]
    errors_by_kind: list[tuple[str, int]]
    latency: list[Percentiles]
    keys_by_status: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return self.errors_window / self.turns_window if self.turns_window else None


def percentile_from_histogram(counts: dict[int, int], share: float) -> int | None:
    """The upper bound (ms) of the bucket holding the `share` quantile; None if empty.

    The open-ended last bucket reports the last bound: "at least that long".
    """
    total = sum(counts.values())
    if not total:
        return None
    rank = max(1, math.ceil(share * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return LATENCY_BUCKETS_MS[min(bucket, len(LATENCY_BUCKETS_MS) - 1)]
    return LATENCY_BUCKETS_MS[-1]


def latency_by_provider(*, since: date) -> list[Percentiles]:
    """p50 and p95 of time to first token and total time per provider since `since`."""
    histograms: dict[str, dict[str, dict[int, int]]] = defaultdict(
        lambda: {"ttft": defaultdict(int), "total": defaultdict(int)}
    )
    rows = (
        LatencyDaily.objects.filter(day__gte=since)
        .values_list("preset", "metric", "bucket")
        .annotate(n=Sum("count"))
    )
    for preset, metric, bucket, n in rows:
        histograms[preset][metric][bucket] += n
    result = []
    for preset in sorted(histograms):
        ttft, total = histograms[preset]["ttft"], histograms[preset]["total"]
        result.append(
            Percentiles(
                preset=preset,
                turns=sum(total.values()),
                ttft_p50=percentile_from_histogram(ttft, 0.5),
                ttft_p95=percentile_from_histogram(ttft, 0.95),
                total_p50=percentile_from_histogram(total, 0.5),
                total_p95=percentile_from_histogram(total, 0.95),
            )
        )
    return result


def queue_depths() -> dict[str, int | None]:
    """Messages waiting in each Celery queue (Redis lists named after the queues).

    None when Redis cannot be reached: the dashboard says so instead of failing.
    """
    try:
        pipe = get_redis().pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(queue)
        return dict(zip(QUEUES, (int(n) for n in pipe.execute()), strict=True))
    except Exception:
        return dict.fromkeys(QUEUES)


def health(*, now: datetime | None = None) -> Health:
    """Workers, queues, the oldest queued turn and stuck turns, with what looks wrong."""
    now = now or timezone.now()
    depths = queue_depths()
    try:
        workers = sorted(live_workers())
    except Exception:
        workers = []
    oldest = Message.objects.filter(status=Message.Status.QUEUED).aggregate(at=Min("created_at"))[
        "at"
    ]
    oldest_seconds = max(0, int((now - oldest).total_seconds())) if oldest else None
    stuck = stuck_turns_filter(now=now)
    stuck_count = Message.objects.filter(stuck).count()
    problems = []
    if not workers:
        problems.append("No worker has sent a heartbeat: turns are not being answered.")
    if any(depth is None for depth in depths.values()):
        problems.append("Redis cannot be reached: queue depth is unknown.")
    if oldest_seconds is not None and oldest_seconds > settings.BYOK_QUEUED_TURN_TIMEOUT // 2:
        problems.append(
            f"The queue is growing: the oldest waiting turn was queued {oldest_seconds} s ago."
        )
    if stuck_count:
        problems.append(f"{stuck_count} turn(s) look stuck.")
    return Health(depths, workers, oldest, oldest_seconds, stuck_count, problems)


def stuck_turns_filter(*, now: datetime | None = None) -> Q:
    """Turns past their limits: queued longer than the queue timeout, or running longer
    than the hard time limit (the reaper will fail them on its next run)."""
    now = now or timezone.now()
    queued_before = now - timedelta(seconds=settings.BYOK_QUEUED_TURN_TIMEOUT)
    running_before = now - timedelta(seconds=settings.BYOK_TURN_HARD_LIMIT)
    return Q(status=Message.Status.QUEUED, created_at__lt=queued_before) | Q(
        status=Message.Status.RUNNING, started_at__lt=running_before
    )


USER_COUNTS_CACHE_SECONDS = 60


def user_counts(*, joined_since: datetime, active_since: date) -> dict[str, int]:
    """All users, those who joined since `joined_since` and those whose latest turn is on
    or after `active_since`, cached for a minute.

    Users have no rollup (accounts owns sign-up), and an exact count of every row costs
    tens of milliseconds at 100,000 users; a minute-old count is fine for a dashboard.
    """
    key = f"ops:user_counts:{joined_since.isoformat()}:{active_since.isoformat()}"
    cached = cache.get(key)
    if cached is None:
        cached = {
            "total": User.objects.count(),
            "new": User.objects.filter(date_joined__gte=joined_since).count(),
            "active": UserActivity.objects.filter(last_turn_on__gte=active_since).count(),
        }
        cache.set(key, cached, USER_COUNTS_CACHE_SECONDS)
    return dict(cached)


def dashboard(*, today: date | None = None) -> Dashboard:
    """Every figure of the dashboard index except health (see `health`)."""
    today = today or timezone.localdate()
    window_start = today - timedelta(days=WINDOW_DAYS - 1)
    chart_start = today - timedelta(days=CHART_DAYS - 1)
    window_start_at = timezone.make_aware(datetime.combine(window_start, datetime.min.time()))

    users = user_counts(joined_since=window_start_at, active_since=window_start)
    users_active = users["active"]

    days = [chart_start + timedelta(days=i) for i in range(CHART_DAYS)]
    index = {day: i for i, day in enumerate(days)}
    tokens: dict[str, list[int]] = {}
    spend: dict[str, list[int]] = {}
    turns_today = turns_window = errors_window = 0
    for row in ProviderDaily.objects.filter(day__gte=chart_start, day__lte=today).values(
        "day", "preset", "turns", "errors", "input_tokens", "output_tokens", "cost_micro"
    ):
        preset = row["preset"]
        i = index[row["day"]]
        tokens.setdefault(preset, [0] * CHART_DAYS)[i] += row["input_tokens"] + row["output_tokens"]
        spend.setdefault(preset, [0] * CHART_DAYS)[i] += row["cost_micro"]
        if row["day"] == today:
            turns_today += row["turns"]
        if row["day"] >= window_start:
            turns_window += row["turns"]
            errors_window += row["errors"]
    presets = sorted(tokens, key=lambda p: -sum(tokens[p]))

    errors_by_kind = list(
        ErrorDaily.objects.filter(day__gte=window_start)
        .values_list("error_kind")
        .annotate(n=Sum("count"))
        .order_by("-n", "error_kind")
    )
    keys_by_status = dict(
        ProviderKey.objects.filter(
            status__in=[ProviderKey.Status.INVALID, ProviderKey.Status.NO_CREDIT]
        )
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    return Dashboard(
        today=today,
        window_start=window_start,
        chart_start=chart_start,
        users_total=users["total"],
        users_new=users["new"],
        users_active=users_active,
        turns_today=turns_today,
        turns_window=turns_window,
        errors_window=errors_window,
        days=days,
        tokens_by_preset=tokens,
        spend_by_preset=spend,
        presets=presets,
        errors_by_kind=[(kind, int(n)) for kind, n in errors_by_kind],
        latency=latency_by_provider(since=window_start),
        keys_by_status={status: int(n) for status, n in keys_by_status.items()},
    )
