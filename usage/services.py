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
from dataclasses import dataclass
from datetime import date
from functools import partial

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import User
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


def usage_record(*, turn: TurnUsage) -> UsageEvent | None:
    """Record a turn's usage once, update the rollups and settle its reservation.

    Returns the new event, or None when the message was recorded already (a second call
    changes nothing). Call inside the transaction that stores the turn's outcome.
    """
    price = price_for(turn.preset, turn.model)
    cost = cost_micro(price, turn.tokens) if price is not None else None
    today = timezone.localdate()
    key_id = turn.key_id or NO_KEY
    with transaction.atomic():
        try:
            with transaction.atomic():
                event = UsageEvent.objects.create(
                    owner=turn.owner,
                    message_id=turn.message_id,
                    conversation_id=turn.conversation_id,
                    key_id=turn.key_id,
                    key_label=turn.key_label[:80],
                    preset=turn.preset,
                    model=turn.model[:200],
                    status=turn.status,
                    error_kind=turn.error_kind[:32],
                    input_tokens=turn.tokens.input,
                    output_tokens=turn.tokens.output,
                    cached_tokens=turn.tokens.cached,
                    cache_write_tokens=turn.tokens.cache_write,
                    reasoning_tokens=turn.reasoning_tokens,
                    price_input=price.input if price else None,
                    price_output=price.output if price else None,
                    price_cache_read=price.cache_read if price else None,
                    price_cache_write=price.cache_write if price else None,
                    cost_micro=cost,
                    ttft_ms=turn.ttft_ms,
                    latency_ms=turn.latency_ms,
                    day=today,
                )
        except IntegrityError:
            return None  # recorded already: never twice
        _bump(
            UsageDaily,
            {"owner": turn.owner, "day": today, "key_id": key_id, "model": event.model},
            {"key_label": event.key_label, "preset": event.preset},
            turns=1,
            errors=1 if turn.status == UsageEvent.Status.ERROR else 0,
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            cached_tokens=event.cached_tokens,
            reasoning_tokens=event.reasoning_tokens,
            cost_micro=cost or 0,
            unpriced_turns=1 if cost is None else 0,
        )
        if turn.conversation_id is not None:
            _bump(
                UsageConversationDaily,
                {"owner": turn.owner, "day": today, "conversation_id": turn.conversation_id},
                {},
                turns=1,
                input_tokens=event.input_tokens,
                output_tokens=event.output_tokens,
                cost_micro=cost or 0,
                unpriced_turns=1 if cost is None else 0,
            )
        _settle(owner=turn.owner, message_id=turn.message_id, key_id=key_id, cost=cost or 0)
    return event


def _bump(
    model: type[UsageDaily] | type[UsageConversationDaily],
    lookup: dict[str, object],
    extra: dict[str, object],
    **counts: int,
) -> None:
    """Add `counts` to the rollup row `lookup`, creating it on first use (race-safe)."""
    increments = {name: F(name) + value for name, value in counts.items() if value}
    if increments and model.objects.filter(**lookup).update(**increments):
        return
    if not increments and model.objects.filter(**lookup).exists():
        return
    try:
        with transaction.atomic():
            model.objects.create(**lookup, **extra, **counts)
    except IntegrityError:  # another turn created it first
        model.objects.filter(**lookup).update(**increments)


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


def _settle(*, owner: User, message_id: uuid.UUID, key_id: uuid.UUID, cost: int) -> None:
    """Turn the reservation (if any) into real spend, in every ledger of this month."""
    reservation = Reservation.objects.select_for_update().filter(message_id=message_id).first()
    month = reservation.month if reservation else month_start(timezone.localdate())
    if reservation is not None:
        _unreserve(reservation)
        reservation.delete()
    if cost:
        # Both ledgers, always: a cap set later this month starts from the real spend.
        for scope in {NO_KEY, key_id}:
            _ledger(owner, scope, month)
            MonthlySpend.objects.filter(owner=owner, key_id=scope, month=month).update(
                spent_micro=F("spent_micro") + cost
            )
    _warn_if_near_cap(owner, key_id, month)


def _warn_if_near_cap(owner: User, key_id: uuid.UUID, month: date) -> None:
    for cap in _scopes(owner, key_id):
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
    month = month_start(timezone.localdate())
    _ledger(owner, cap.key_id, month)
    ledger = MonthlySpend.objects.get(owner=owner, key_id=cap.key_id, month=month)
    if ledger.spent_micro < int(limit_micro * CAP_WARNING_SHARE):
        MonthlySpend.objects.filter(pk=ledger.pk).update(warned=False)
    return cap


def spend_cap_remove(*, owner: User, key_id: uuid.UUID | None) -> None:
    SpendCap.objects.filter(owner=owner, key_id=key_id or NO_KEY).delete()


def usage_settings_set(*, owner: User, allow_unknown_prices: bool) -> UsageSettings:
    settings_row, _ = UsageSettings.objects.update_or_create(
        owner=owner, defaults={"allow_unknown_prices": allow_unknown_prices}
    )
    return settings_row
