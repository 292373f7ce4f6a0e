"""Recording usage, reserving and settling spend under caps, and managing caps.

Write path per finished turn: one UsageEvent (unique per message), the two rollups and the
cap ledgers, all in one transaction. A reservation holds a turn's worst-case cost from before
the call until it settles, with a conditional UPDATE per cap scope, so concurrent turns cannot
run past a cap.
"""

from __future__ import annotations

import calendar
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Model, Sum
from django.utils import timezone

from accounts.models import User
from ops.services import operator_rollups_record
from usage.models import (
    NO_KEY,
    MonthlySpend,
    Reservation,
    SpendCap,
    UsageConversationDaily,
    UsageDaily,
    UsageEvent,
    UsageSettings,
)
from usage.prices import TokenCounts, cost_micro, price_for, worst_case_micro

logger = logging.getLogger(__name__)

CAP_WARNING_SHARE = 0.8
MAX_CAP_MICRO = 1_000_000 * 1_000_000  # $1,000,000 a month


class BudgetError(Exception):
    """A turn refused by a spend cap, with a message that names the cap and its reset."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def month_start(day: date) -> date:
    return day.replace(day=1)


def next_month_start(day: date) -> date:
    last = calendar.monthrange(day.year, day.month)[1]
    return day.replace(day=last) + (date(2000, 1, 2) - date(2000, 1, 1))


def format_usd(micro: int | None) -> str:
    if micro is None:
        return "price unknown"
    dollars = micro / 1_000_000
    if micro and dollars < 0.01:
        return f"${dollars:.4f}"
    return f"${dollars:,.2f}"


# --- recording ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnUsage:
    """What a finished or failed turn reports for usage."""

    owner: User
    message_id: uuid.UUID
    conversation_id: uuid.UUID | None
    key_id: uuid.UUID | None
    key_label: str
    preset: str
    model: str
    status: str
    error_kind: str
    tokens: TokenCounts
    reasoning_tokens: int
    ttft_ms: int | None
    latency_ms: int | None


def usage_record(*, turn: TurnUsage) -> bool:
    """Record a turn's usage once, update the rollups and settle its reservation.

    Returns False when the message was recorded already (a second call changes nothing).
    Call inside the transaction that stores the turn's outcome. Each write is a single
    upsert statement, so this stays cheap; it runs once per turn, after the stream has ended.
    """
    price = price_for(turn.preset, turn.model)
    cost = cost_micro(price, turn.tokens) if price is not None else None
    today = timezone.localdate()
    key_id = turn.key_id or NO_KEY
    model = turn.model[:200]
    key_label = turn.key_label[:80]
    with transaction.atomic():
        inserted = _insert_ignoring_duplicate(
            UsageEvent,
            conflict=("message_id",),
            values={
                "owner_id": turn.owner.pk,
                "message_id": turn.message_id,
                "conversation_id": turn.conversation_id,
                "key_id": turn.key_id,
                "key_label": key_label,
                "preset": turn.preset,
                "model": model,
                "status": turn.status,
                "error_kind": turn.error_kind[:32],
                "input_tokens": turn.tokens.input,
                "output_tokens": turn.tokens.output,
                "cached_tokens": turn.tokens.cached,
                "cache_write_tokens": turn.tokens.cache_write,
                "reasoning_tokens": turn.reasoning_tokens,
                "price_input": price.input if price else None,
                "price_output": price.output if price else None,
                "price_cache_read": price.cache_read if price else None,
                "price_cache_write": price.cache_write if price else None,
                "cost_micro": cost,
                "ttft_ms": turn.ttft_ms,
                "latency_ms": turn.latency_ms,
                "day": today,
                "created_at": timezone.now(),
            },
        )
        if not inserted:
            return False  # recorded already: never twice
        operator_rollups_record(turn=turn, day=today, cost_micro=cost)
        _upsert_adding(
            UsageDaily,
            keys={"owner_id": turn.owner.pk, "day": today, "key_id": key_id, "model": model},
            labels={"key_label": key_label, "preset": turn.preset},
            counts={
                "turns": 1,
                "errors": 1 if turn.status == UsageEvent.Status.ERROR else 0,
                "input_tokens": turn.tokens.input,
                "output_tokens": turn.tokens.output,
                "cached_tokens": turn.tokens.cached,
                "reasoning_tokens": turn.reasoning_tokens,
                "cost_micro": cost or 0,
                "unpriced_turns": 1 if cost is None else 0,
            },
        )
        if turn.conversation_id is not None:
            _upsert_adding(
                UsageConversationDaily,
                keys={
                    "owner_id": turn.owner.pk,
                    "day": today,
                    "conversation_id": turn.conversation_id,
                },
                labels={},
                counts={
                    "turns": 1,
                    "input_tokens": turn.tokens.input,
                    "output_tokens": turn.tokens.output,
                    "cost_micro": cost or 0,
                    "unpriced_turns": 1 if cost is None else 0,
                },
            )
        caps = _scopes(turn.owner, key_id)
        if caps:
            _settle(owner=turn.owner, message_id=turn.message_id, caps=caps, cost=cost or 0)
    return True


def _column_values(model: type[Model], values: Mapping[str, object]) -> tuple[list[str], list[Any]]:
    """Quoted column names and database-ready values (UUIDs and dates as each backend
    stores them)."""
    fields = {field.attname: field for field in model._meta.concrete_fields}
    columns, prepared = [], []
    for attname, value in values.items():
        field = fields[attname]
        columns.append(connection.ops.quote_name(field.column))
        prepared.append(field.get_db_prep_save(value, connection))
    return columns, prepared


def _insert_ignoring_duplicate(
    model: type[Model], *, conflict: tuple[str, ...], values: dict[str, object]
) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING: True if the row is new."""
    columns, params = _column_values(model, values)
    table = connection.ops.quote_name(model._meta.db_table)
    targets = ", ".join(connection.ops.quote_name(c) for c in conflict)
    placeholders = ", ".join(["%s"] * len(columns))
    # Names come from the model's own metadata, quoted; every value is a parameter.
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "  # noqa: S608
        f"ON CONFLICT ({targets}) DO NOTHING"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount == 1


def _upsert_adding(
    model: type[Model],
    *,
    keys: dict[str, object],
    labels: dict[str, object],
    counts: dict[str, int],
) -> None:
    """Create the row `keys` with `counts`, or add `counts` to it, in one statement
    (race-free on PostgreSQL and SQLite alike)."""
    columns, params = _column_values(model, {**keys, **labels, **counts})
    table = connection.ops.quote_name(model._meta.db_table)
    key_columns, _ = _column_values(model, keys)
    count_columns, _ = _column_values(model, counts)
    additions = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in count_columns)
    placeholders = ", ".join(["%s"] * len(columns))
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "  # noqa: S608
        f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {additions}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


# --- caps and reservations ---------------------------------------------------------------


def _scopes(owner: User, key_id: uuid.UUID) -> list[SpendCap]:
    return list(SpendCap.objects.filter(owner=owner, key_id__in=[NO_KEY, key_id]))


def _ledger(owner: User, key_id: uuid.UUID, month: date) -> None:
    try:
        with transaction.atomic():
            MonthlySpend.objects.get_or_create(owner=owner, key_id=key_id, month=month)
    except IntegrityError:
        pass


def _cap_message(cap: SpendCap, reset: date, key_label: str) -> str:
    scope = (
        "your monthly spend cap" if cap.key_id == NO_KEY else f"the monthly cap of “{key_label}”"
    )
    return (
        f"This message could cost more than what is left of {scope} "
        f"({format_usd(cap.limit_micro)}). It resets on {reset:%-d %B}. Raise the cap on the "
        "Usage page, or wait."
    )


def budget_reserve(
    *,
    owner: User,
    message_id: uuid.UUID,
    key_id: uuid.UUID,
    key_label: str,
    preset: str,
    model: str,
    input_tokens_estimate: int,
    max_output_tokens: int,
) -> None:
    """Hold the turn's worst-case cost under every cap that applies, or raise BudgetError.

    All scopes or none: a refusal by the key's cap releases what the user cap took. With no
    cap, nothing is reserved. A model without a known price runs only without caps, or when
    the user allowed unknown prices.
    """
    caps = _scopes(owner, key_id)
    if not caps:
        return
    price = price_for(preset, model)
    if price is None:
        allowed = UsageSettings.objects.filter(owner=owner, allow_unknown_prices=True).exists()
        if not allowed:
            raise BudgetError(
                f"BYOK does not know the price of {model}, so it cannot keep this turn under "
                "your spend cap. Pick a model with a known price, or allow unknown prices on "
                "the Usage page."
            )
        return
    amount = worst_case_micro(
        price, input_tokens=input_tokens_estimate, max_output_tokens=max_output_tokens
    )
    month = month_start(timezone.localdate())
    with transaction.atomic():
        for cap in caps:
            _ledger(owner, cap.key_id, month)
            taken = MonthlySpend.objects.filter(
                owner=owner,
                key_id=cap.key_id,
                month=month,
                spent_micro__lte=cap.limit_micro - amount - F("reserved_micro"),
            ).update(reserved_micro=F("reserved_micro") + amount)
            if not taken:  # raising rolls back what earlier scopes took
                raise BudgetError(_cap_message(cap, next_month_start(month), key_label))
        Reservation.objects.update_or_create(
            message_id=message_id,
            defaults={"owner": owner, "key_id": key_id, "month": month, "amount_micro": amount},
        )


def budget_release(*, message_id: uuid.UUID) -> None:
    """Give back a turn's reservation without spending it (the call never happened)."""
    with transaction.atomic():
        reservation = Reservation.objects.select_for_update().filter(message_id=message_id).first()
        if reservation is None:
            return
        _unreserve(reservation)
        reservation.delete()


def _unreserve(reservation: Reservation) -> None:
    MonthlySpend.objects.filter(
        owner_id=reservation.owner_id,
        key_id__in=[NO_KEY, reservation.key_id],
        month=reservation.month,
    ).update(reserved_micro=F("reserved_micro") - reservation.amount_micro)


def _settle(*, owner: User, message_id: uuid.UUID, caps: list[SpendCap], cost: int) -> None:
    """Turn the turn's reservation (if any) into real spend in the ledger of each cap."""
    reservation = Reservation.objects.select_for_update().filter(message_id=message_id).first()
    month = reservation.month if reservation else month_start(timezone.localdate())
    if reservation is not None:
        _unreserve(reservation)
        reservation.delete()
    for cap in caps:
        _upsert_adding(
            MonthlySpend,
            keys={"owner_id": owner.pk, "key_id": cap.key_id, "month": month},
            labels={"reserved_micro": 0, "warned": False},
            counts={"spent_micro": cost},
        )
    _warn_if_near_cap(owner, caps, month)


def _warn_if_near_cap(owner: User, caps: list[SpendCap], month: date) -> None:
    for cap in caps:
        threshold = int(cap.limit_micro * CAP_WARNING_SHARE)
        if MonthlySpend.objects.filter(
            owner=owner, key_id=cap.key_id, month=month, warned=False, spent_micro__gte=threshold
        ).update(warned=True):
            from usage.tasks import send_cap_warning

            transaction.on_commit(partial(send_cap_warning.delay, cap.pk), robust=True)


def budget_check_before_send(*, owner: User, key_id: uuid.UUID, key_label: str) -> None:
    """Refuse at once when a cap is already used up (the worker still reserves exactly)."""
    month = month_start(timezone.localdate())
    for cap in _scopes(owner, key_id):
        ledger = MonthlySpend.objects.filter(owner=owner, key_id=cap.key_id, month=month).first()
        if ledger is not None and ledger.spent_micro >= cap.limit_micro:
            raise BudgetError(
                _cap_message(cap, next_month_start(month), key_label).replace(
                    "could cost more than what is left of", "cannot run: you have reached"
                )
            )


def spend_cap_set(*, owner: User, key_id: uuid.UUID | None, limit_micro: int) -> SpendCap:
    if limit_micro <= 0:
        raise BudgetError("A cap must be more than $0. To remove a cap, use Remove.")
    if limit_micro > MAX_CAP_MICRO:
        raise BudgetError("A cap can be at most $1,000,000 a month.")
    cap, _ = SpendCap.objects.update_or_create(
        owner=owner, key_id=key_id or NO_KEY, defaults={"limit_micro": limit_micro}
    )
    # The ledger only runs while a cap exists: start it from this month's rollups.
    month = month_start(timezone.localdate())
    rollups = UsageDaily.objects.filter(owner=owner, day__gte=month)
    if cap.key_id != NO_KEY:
        rollups = rollups.filter(key_id=cap.key_id)
    spent = rollups.aggregate(total=Sum("cost_micro"))["total"] or 0
    _ledger(owner, cap.key_id, month)
    MonthlySpend.objects.filter(owner=owner, key_id=cap.key_id, month=month).update(
        spent_micro=spent, warned=spent >= int(limit_micro * CAP_WARNING_SHARE)
    )
    return cap


def spend_cap_remove(*, owner: User, key_id: uuid.UUID | None) -> None:
    SpendCap.objects.filter(owner=owner, key_id=key_id or NO_KEY).delete()


def usage_settings_set(*, owner: User, allow_unknown_prices: bool) -> UsageSettings:
    settings_row, _ = UsageSettings.objects.update_or_create(
        owner=owner, defaults={"allow_unknown_prices": allow_unknown_prices}
    )
    return settings_row
