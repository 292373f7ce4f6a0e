"""Usage, prices and spend control.

Money is integer micro-dollars (1 USD = 1,000,000); prices are micro-dollars per million
tokens. A price or cost of None means "unknown" — never zero.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone

if TYPE_CHECKING:
    from accounts.models import User

# Stands for "no key" in rollups and "all keys" in caps: unique constraints treat NULLs as
# distinct on SQLite, so a real value keeps the upserts race-free on every database.
NO_KEY = uuid.UUID(int=0)


class ModelPrice(models.Model):
    """Public per-million-token prices of one provider's model; operators may override."""

    preset = models.CharField("provider", max_length=32)
    model = models.CharField(max_length=200)
    input_per_mtok = models.PositiveBigIntegerField("input (µ$ per 1M tokens)")
    output_per_mtok = models.PositiveBigIntegerField("output (µ$ per 1M tokens)")
    cache_read_per_mtok = models.PositiveBigIntegerField(
        "cache read (µ$ per 1M tokens)", null=True, blank=True
    )
    cache_write_per_mtok = models.PositiveBigIntegerField(
        "cache write (µ$ per 1M tokens)", null=True, blank=True
    )
    overridden = models.BooleanField(
        default=False, help_text="Set by an operator; kept when the shipped price list reloads."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["preset", "model"], name="usage_price_unique_model")
        ]
        ordering = ["preset", "model"]

    def __str__(self) -> str:
        return f"{self.preset}/{self.model}"


class UsageEventQuerySet(models.QuerySet["UsageEvent"]):
    def for_owner(self, user: User) -> UsageEventQuerySet:
        return self.filter(owner=user)


class UsageDailyQuerySet(models.QuerySet["UsageDaily"]):
    def for_owner(self, user: User) -> UsageDailyQuerySet:
        return self.filter(owner=user)


class UsageConversationDailyQuerySet(models.QuerySet["UsageConversationDaily"]):
    def for_owner(self, user: User) -> UsageConversationDailyQuerySet:
        return self.filter(owner=user)


class SpendCapQuerySet(models.QuerySet["SpendCap"]):
    def for_owner(self, user: User) -> SpendCapQuerySet:
        return self.filter(owner=user)


class UsageEvent(models.Model):
    """One finished or failed turn. Unique per message: recording twice is impossible."""

    class Status(models.TextChoices):
        DONE = "done", "Done"
        STOPPED = "stopped", "Stopped"
        ERROR = "error", "Failed"

    class Purpose(models.TextChoices):
        CHAT = "chat", "Chat"
        TITLE = "title", "Title"  # a conversation's title, written by its model (chat.titles)

    # Indexed by (owner, day) below; an index of its own would only cost every write.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    message_id = models.UUIDField(unique=True)
    conversation_id = models.UUIDField(null=True, blank=True)
    key_id = models.UUIDField(null=True, blank=True)
    key_label = models.CharField(max_length=80, blank=True)
    preset = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices)
    # What the call was for: a chat reply, or a conversation's title.
    purpose = models.CharField(max_length=8, choices=Purpose.choices, default=Purpose.CHAT)
    error_kind = models.CharField(max_length=32, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    # True when the counts are this server's estimate (the stream ended before the provider
    # reported usage), not the provider's own.
    tokens_estimated = models.BooleanField(default=False)
    # Price snapshot (µ$ per 1M tokens) at the time of the turn; None = unknown.
    price_input = models.PositiveBigIntegerField(null=True, blank=True)
    price_output = models.PositiveBigIntegerField(null=True, blank=True)
    price_cache_read = models.PositiveBigIntegerField(null=True, blank=True)
    price_cache_write = models.PositiveBigIntegerField(null=True, blank=True)
    cost_micro = models.PositiveBigIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    day = models.DateField()
    created_at = models.DateTimeField(default=timezone.now)

    objects: ClassVar[UsageEventQuerySet] = UsageEventQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        indexes = [models.Index(fields=["owner", "day"]), models.Index(fields=["day"])]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"usage of message {self.message_id}"


class UsageDaily(models.Model):
    """Rollup per user, day, key and model, updated in the same transaction as each event."""

    # Indexed by the unique constraint (owner, day, ...): no index of its own.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField()
    key_id = models.UUIDField(default=NO_KEY)
    key_label = models.CharField(max_length=80, blank=True)
    preset = models.CharField(max_length=32)
    model = models.CharField(max_length=200)
    turns = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    cost_micro = models.PositiveBigIntegerField(default=0)
    unpriced_turns = models.PositiveIntegerField(default=0)

    objects: ClassVar[UsageDailyQuerySet] = UsageDailyQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "day", "key_id", "model"], name="usage_daily_unique"
            )
        ]
        indexes = [models.Index(fields=["day", "preset"])]

    def __str__(self) -> str:
        return f"{self.owner_id} {self.day} {self.model}"


class UsageConversationDaily(models.Model):
    """Rollup per user, day and conversation, for the "by conversation" table."""

    # Indexed by the unique constraint (owner, day, ...): no index of its own.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    day = models.DateField()
    conversation_id = models.UUIDField()
    turns = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost_micro = models.PositiveBigIntegerField(default=0)
    unpriced_turns = models.PositiveIntegerField(default=0)

    objects: ClassVar[UsageConversationDailyQuerySet] = UsageConversationDailyQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "day", "conversation_id"], name="usage_conv_daily_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.owner_id} {self.day} {self.conversation_id}"


class RollupStamp(models.Model):
    """A random value that changes whenever the owner's usage rollups change.

    usage_record sets a new one in the same statement or transaction that updates the
    rollups, so a usage page cached under the stamp it read first can never be shown after
    a newer turn committed: the next request reads the new stamp and misses the cache.
    """

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    stamp = models.UUIDField(default=uuid.uuid4)

    def __str__(self) -> str:
        return f"rollup stamp of {self.owner_id}"


class SpendCap(models.Model):
    """A monthly cap set by the user: on all their spend (key empty) or on one key."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key_id = models.UUIDField(default=NO_KEY, help_text="NO_KEY: the cap covers all keys.")
    limit_micro = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects: ClassVar[SpendCapQuerySet] = SpendCapQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "key_id"], name="usage_one_cap_per_scope")
        ]

    def __str__(self) -> str:
        return f"cap {self.limit_micro} for {self.owner_id}/{self.key_id or 'all'}"


class MonthlySpend(models.Model):
    """Spent and reserved micro-dollars of one cap scope in one month.

    Reservations are taken with a conditional UPDATE (`spent + reserved + amount <= limit`),
    so concurrent turns cannot run past a cap.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key_id = models.UUIDField(default=NO_KEY)
    month = models.DateField(help_text="First day of the month.")
    spent_micro = models.BigIntegerField(default=0)
    reserved_micro = models.BigIntegerField(default=0)
    warned = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "key_id", "month"], name="usage_monthly_spend_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.owner_id}/{self.key_id or 'all'} {self.month}"


class Reservation(models.Model):
    """The worst-case cost held for one turn until it settles. At most one per message."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    message_id = models.UUIDField(unique=True)
    key_id = models.UUIDField(null=True, blank=True)
    month = models.DateField()
    amount_micro = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"reservation for {self.message_id}"


class UsageSettings(models.Model):
    """A user's usage preferences."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_settings"
    )
    allow_unknown_prices = models.BooleanField(
        default=False,
        help_text="Let models with an unknown price run even when a spend cap applies.",
    )

    def __str__(self) -> str:
        return f"usage settings of {self.owner_id}"


class RateLimitOverride(models.Model):
    """An operator's per-user exception to the default rate limits."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rate_limit_override"
    )
    turns_per_minute = models.PositiveIntegerField(null=True, blank=True)
    concurrent_turns = models.PositiveIntegerField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"rate limits of {self.user_id}"


# --- The operator dashboard's rollups ----------------------------------------------------
# Updated once per recorded turn (usage.recording), so the dashboard (ops.selectors) reads
# only these small tables, however many users and usage events there are. Metadata only:
# counts, tokens, money and timings per day and provider, never a user's text or key.

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
    """The last day each user made a turn: the dashboard's active users (an indexed count)
    and the "made a turn" filter of the user list."""

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
