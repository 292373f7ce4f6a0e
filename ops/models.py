"""Rollups for the operator dashboard, updated once per recorded turn.

The dashboard reads only these small tables (plus a few counts), so it stays fast however
many users and usage events there are. They hold metadata only: counts, tokens, money and
timings per day and provider, never a user's text or key.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

# Upper bounds (ms) of the latency histogram buckets; the last bucket is open-ended.
LATENCY_BUCKETS_MS: tuple[int, ...] = (
    50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500,
    10_000, 15_000, 20_000, 30_000, 60_000, 120_000, 300_000,
)  # fmt: skip


def latency_bucket(ms: int) -> int:
    """Index of the bucket holding `ms`: the first bound at or above it, else the last+1."""
    for index, bound in enumerate(LATENCY_BUCKETS_MS):
        if ms <= bound:
            return index
    return len(LATENCY_BUCKETS_MS)


class ProviderDaily(models.Model):
    """Turns, errors, tokens and spend of all users per day and provider."""

    day = models.DateField()
    preset = models.CharField("provider", max_length=32)
    turns = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    cost_micro = models.PositiveBigIntegerField(default=0)
    unpriced_turns = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "preset"], name="ops_provider_daily_unique")
        ]
        verbose_name = "provider day"

    def __str__(self) -> str:
        return f"{self.day} {self.preset}"


class ErrorDaily(models.Model):
    """Failed turns per day, provider and error class (the provider error taxonomy)."""

    day = models.DateField()
    preset = models.CharField("provider", max_length=32)
    error_kind = models.CharField(max_length=32)
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "preset", "error_kind"], name="ops_error_daily_unique"
            )
        ]
        verbose_name = "error day"

    def __str__(self) -> str:
        return f"{self.day} {self.preset} {self.error_kind}"


class LatencyDaily(models.Model):
    """A histogram of time to first token or total time per day and provider.

    Fixed buckets (LATENCY_BUCKETS_MS) add up across days, so percentiles over any period
    come from a few hundred rows, accurate to a bucket.
    """

    class Metric(models.TextChoices):
        TTFT = "ttft", "Time to first token"
        TOTAL = "total", "Total time"

    day = models.DateField()
    preset = models.CharField("provider", max_length=32)
    metric = models.CharField(max_length=8, choices=Metric.choices)
    bucket = models.PositiveSmallIntegerField()
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["day", "preset", "metric", "bucket"], name="ops_latency_daily_unique"
            )
        ]
        verbose_name = "latency day"

    def __str__(self) -> str:
        return f"{self.day} {self.preset} {self.metric}[{self.bucket}]"


class UserActivity(models.Model):
    """The last day each user made a turn (the "made a turn" filter of the user list)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="+",
    )
    last_turn_on = models.DateField(db_index=True)

    class Meta:
        verbose_name_plural = "user activity"

    def __str__(self) -> str:
        return f"{self.user_id} last active {self.last_turn_on}"


class ActivityDaily(models.Model):
    """How many users made their latest turn on `day`.

    A user's turn moves them from their previous last day to today (-1 there, +1 here), so
    "active in the last N days" is the sum of N rows, however many users there are.
    """

    day = models.DateField(unique=True)
    users = models.BigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "activity days"

    def __str__(self) -> str:
        return f"{self.day}: {self.users}"
