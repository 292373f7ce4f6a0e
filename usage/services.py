"""Spend caps: reserving a turn's worst case before its call, settling or releasing it
after, and managing the caps. (Recording a turn's usage is `usage.recording`.)

A reservation holds a turn's worst-case cost from before the call until it settles, with a
conditional UPDATE per cap scope, so concurrent turns cannot run past a cap.
"""

from __future__ import annotations

import calendar
import logging
import uuid
from datetime import date
from functools import partial

from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from accounts.models import User
from usage.models import (
    NO_KEY,
    MonthlySpend,
    Reservation,
    SpendCap,
    UsageDaily,
    UsageSettings,
)
from usage.prices import Price, output_tokens_affordable, worst_case_micro
from usage.upserts import upsert

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


def cost_summary(cost_micro: int | None, *, turns: int, unpriced_turns: int) -> tuple[str, str]:
    """How a sum of turns' costs is shown, as (figure, note). Unknown is never $0: with no
    turn priced, "—" and "price unknown"; with some unpriced, the dollars of the priced ones
    and "+ N turns of unknown price"; else the dollars alone."""
    if cost_micro is None or (unpriced_turns and unpriced_turns >= turns):
        return "—", "price unknown"
    if unpriced_turns:
        plural = "" if unpriced_turns == 1 else "s"
        return format_usd(cost_micro), f"+ {unpriced_turns} turn{plural} of unknown price"
    return format_usd(cost_micro), ""


def format_cost(micro: int | None, *, estimated: bool = False) -> str:
    """A turn's cost as shown beside it: `format_usd`'s dollars ("price unknown" without a
    price, never $0), after "≈ " when its tokens were estimated."""
    shown = format_usd(micro)
    return f"≈ {shown}" if estimated and micro is not None else shown


# --- caps and reservations ---------------------------------------------------------------


def _scopes(owner_id: int, key_id: uuid.UUID) -> list[SpendCap]:
    return list(SpendCap.objects.filter(owner_id=owner_id, key_id__in=[NO_KEY, key_id]))


def _ledger(owner_id: int, key_id: uuid.UUID, month: date) -> None:
    """The scope's ledger row of `month`, created empty if missing (race-free)."""
    upsert(MonthlySpend, conflict={"owner_id": owner_id, "key_id": key_id, "month": month})


def _cap_message(cap: SpendCap, reset: date, key_label: str) -> str:
    scope = (
        "your monthly spend cap" if cap.key_id == NO_KEY else f"the monthly cap of “{key_label}”"
    )
    return (
        f"This message could cost more than what is left of {scope} "
        f"({format_usd(cap.limit_micro)}). It resets on {reset:%-d %B}. Raise the cap on the "
        "Usage page, or wait."
    )


# The shortest reply worth a call: with less than this left under a cap (or the user's own
# reply limit, if shorter) the turn is refused rather than cut to a few words.
MIN_USEFUL_REPLY_TOKENS = 256


def budget_reserve(
    *,
    owner: User,
    message_id: uuid.UUID,
    key_id: uuid.UUID,
    key_label: str,
    model: str,
    price: Price | None,
    input_tokens_bound: int,
    max_output_tokens: int,
) -> int:
    """Hold the turn's worst-case cost under every cap that applies, or raise BudgetError;
    returns the output limit to send the provider.

    `input_tokens_bound` must be an upper bound on what the provider will count
    (`usage.prices.input_tokens_bound`); the output limit is `max_output_tokens`, or what the
    least remaining cap affords when that is less (refused below MIN_USEFUL_REPLY_TOKENS).
    So the reservation is the most the turn can cost and no cap is ever overrun. `price` is
    the model's (None: unknown). All scopes or none: a refusal by the key's cap releases what
    the user cap took. With no cap, nothing is reserved. A model without a known price runs
    only without caps, or when the user allowed unknown prices.
    """
    caps = _scopes(owner.pk, key_id)
    if not caps:
        return max_output_tokens
    if price is None:
        allowed = UsageSettings.objects.filter(owner=owner, allow_unknown_prices=True).exists()
        if not allowed:
            raise BudgetError(
                f"BYOK does not know the price of {model}, so it cannot keep this turn under "
                "your spend cap. Pick a model with a known price, or allow unknown prices on "
                "the Usage page."
            )
        return max_output_tokens
    month = month_start(timezone.localdate())
    shortest = min(MIN_USEFUL_REPLY_TOKENS, max_output_tokens)
    with transaction.atomic():
        for cap in caps:
            _ledger(owner.pk, cap.key_id, month)
        # Locked, so two turns cannot both count the same room (the conditional updates
        # below would refuse the second anyway).
        ledgers = {
            ledger.key_id: ledger
            for ledger in MonthlySpend.objects.select_for_update().filter(
                owner=owner, key_id__in=[cap.key_id for cap in caps], month=month
            )
        }
        output_limit = max_output_tokens
        for cap in caps:
            ledger = ledgers[cap.key_id]
            room = cap.limit_micro - ledger.spent_micro - ledger.reserved_micro
            affordable = output_tokens_affordable(
                price, budget_micro=room, input_tokens=input_tokens_bound
            )
            if affordable < shortest:
                raise BudgetError(_cap_message(cap, next_month_start(month), key_label))
            output_limit = min(output_limit, affordable)
        amount = worst_case_micro(
            price, input_tokens=input_tokens_bound, max_output_tokens=output_limit
        )
        for cap in caps:
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
    return output_limit


def budget_release(*, message_id: uuid.UUID) -> None:
    """Give back a turn's reservation without spending it (the call never happened).

    Most turns hold none (no cap, or settled when the turn was stored): a plain read finds
    that without a write transaction, which on SQLite would queue for the write lock. Only
    the call's own worker makes a reservation (`budget_reserve`, after its claim), and gives
    it back when the call ends; the web and the reaper release one only after their own
    conditional update ended the call (`completion.engine.close`), so a worker that claimed
    the call meanwhile keeps what it holds.
    """
    if not Reservation.objects.filter(message_id=message_id).exists():
        return
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


def budget_settle(*, owner_id: int, message_id: uuid.UUID, key_id: uuid.UUID, cost: int) -> None:
    """Turn the turn's reservation (if any) into its real cost in the ledger of each cap
    that covers it. Called by `usage_record`, in the transaction that records the turn."""
    reservation = Reservation.objects.select_for_update().filter(message_id=message_id).first()
    month = reservation.month if reservation else month_start(timezone.localdate())
    if reservation is not None:
        _unreserve(reservation)
        reservation.delete()
    caps = _scopes(owner_id, key_id)
    for cap in caps:
        upsert(
            MonthlySpend,
            conflict={"owner_id": owner_id, "key_id": cap.key_id, "month": month},
            add={"spent_micro": cost},
        )
    _warn_if_near_cap(owner_id, caps, month)


def _warn_if_near_cap(owner_id: int, caps: list[SpendCap], month: date) -> None:
    for cap in caps:
        threshold = int(cap.limit_micro * CAP_WARNING_SHARE)
        if MonthlySpend.objects.filter(
            owner_id=owner_id,
            key_id=cap.key_id,
            month=month,
            warned=False,
            spent_micro__gte=threshold,
        ).update(warned=True):
            from usage.tasks import send_cap_warning

            transaction.on_commit(partial(send_cap_warning.delay, cap.pk), robust=True)


def budget_check_before_send(*, owner: User, key_id: uuid.UUID, key_label: str) -> None:
    """Refuse at once when a cap is already used up (the worker still reserves exactly)."""
    month = month_start(timezone.localdate())
    for cap in _scopes(owner.pk, key_id):
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
    _ledger(owner.pk, cap.key_id, month)
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
