"""Recording usage, reserving and settling spend under caps, and managing caps.

Write path per finished turn: one UsageEvent (unique per message), the two rollups, the
operator rollups and the cap ledgers, all in the caller's transaction (one statement on
PostgreSQL). A reservation holds a turn's worst-case cost from before
the call until it settles, with a conditional UPDATE per cap scope, so concurrent turns cannot
run past a cap.
"""

from __future__ import annotations

import calendar
import logging
import re
import uuid
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Model, Sum
from django.utils import timezone

from accounts.models import User
from ops.services import (
    OPERATOR_ACTIVITY_RACED,
    OPERATOR_ROLLUPS_CTES,
    OPERATOR_ROLLUPS_PARAM_TYPES,
    operator_activity_record_again,
    operator_rollups_params,
    operator_rollups_record,
)
from usage.models import (
    NO_KEY,
    MonthlySpend,
    Reservation,
    RollupStamp,
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
    Call inside the transaction that stores the turn's outcome: everything here joins it.
    On PostgreSQL it is one statement (a data-modifying CTE: the event, its price and cost,
    both rollups, the operator rollups, the rollup stamp and the cap ledgers); elsewhere a
    few single-row upserts with the same effect.
    """
    today = timezone.localdate()
    if connection.vendor == "postgresql":
        return _record_in_one_statement(turn, today)
    return _record_step_by_step(turn, today)


def _record_step_by_step(turn: TurnUsage, today: date) -> bool:
    """The portable write path (SQLite has no data-modifying CTEs)."""
    price = price_for(turn.preset, turn.model)
    cost = cost_micro(price, turn.tokens) if price is not None else None
    key_id = turn.key_id or NO_KEY
    model = turn.model[:200]
    key_label = turn.key_label[:80]
    # savepoint=False: inside the caller's transaction (the turn's outcome) a savepoint would
    # cost two more statements while SQLite's write lock is held; a failure here fails both.
    with transaction.atomic(savepoint=False):
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
        usage_rollups_changed(owner_ids=[turn.owner.pk])
        caps = _scopes(turn.owner, key_id)
        if caps:
            _settle(owner=turn.owner, message_id=turn.message_id, caps=caps, cost=cost or 0)
    return True


# One statement per turn on PostgreSQL. Every CTE below `ev` reads `ev`, so a duplicate
# event (ON CONFLICT DO NOTHING: no row) changes nothing. The cost is computed here from the
# price row exactly as usage.prices.cost_micro does (a test holds the two together), so the
# price lookup costs no round trip of its own. Ledgers: each cap's row of the reservation's
# month (else this month) gets the real cost, and the reservation (deleted here) is taken
# off every row it was added to, in the same upsert for the capped scopes (a statement may
# change a row only once) and in `unreserve` for a scope whose cap was removed meanwhile.
_RECORD_CTES = [
    """price AS (
        SELECT input_per_mtok, output_per_mtok, cache_read_per_mtok, cache_write_per_mtok
        FROM usage_modelprice WHERE preset = %(preset)s AND model = %(price_model)s
    )""",
    """priced AS (
        SELECT p.*,
               div(GREATEST(0, %(input)s::bigint - t.cached - t.written)::numeric
                       * p.input_per_mtok
                   + t.cached::numeric * COALESCE(p.cache_read_per_mtok, 0)
                   + t.written::numeric * COALESCE(p.cache_write_per_mtok, 0)
                   + %(output)s::numeric * p.output_per_mtok
                   + 500000, 1000000)::bigint AS cost
        FROM (SELECT 1) AS one
        LEFT JOIN price AS p ON true
        CROSS JOIN LATERAL (
            SELECT CASE WHEN p.cache_read_per_mtok IS NULL THEN 0
                        ELSE %(cached)s::bigint END AS cached,
                   CASE WHEN p.cache_write_per_mtok IS NULL THEN 0
                        ELSE %(cache_write)s::bigint END AS written
        ) AS t
    )""",
    """ev AS (
        INSERT INTO usage_usageevent (owner_id, message_id, conversation_id, key_id, key_label,
            preset, model, status, error_kind, input_tokens, output_tokens, cached_tokens,
            cache_write_tokens, reasoning_tokens, price_input, price_output, price_cache_read,
            price_cache_write, cost_micro, ttft_ms, latency_ms, day, created_at)
        SELECT %(owner)s, %(message_id)s, %(conversation_id)s::uuid, %(event_key_id)s::uuid,
               %(key_label)s, %(preset)s, %(model)s, %(status)s, %(error_kind)s, %(input)s,
               %(output)s, %(cached)s, %(cache_write)s, %(reasoning)s, input_per_mtok,
               output_per_mtok, cache_read_per_mtok, cache_write_per_mtok, cost,
               %(ttft)s::integer, %(latency)s::integer, %(day)s, %(now)s
        FROM priced
        ON CONFLICT (message_id) DO NOTHING
        RETURNING cost_micro
    )""",
    """daily AS (
        INSERT INTO usage_usagedaily AS t (owner_id, day, key_id, key_label, preset, model,
            turns, errors, input_tokens, output_tokens, cached_tokens, reasoning_tokens,
            cost_micro, unpriced_turns)
        SELECT %(owner)s, %(day)s, %(key_id)s, %(key_label)s, %(preset)s, %(model)s, 1,
               %(errors)s, %(input)s, %(output)s, %(cached)s, %(reasoning)s,
               COALESCE(ev.cost_micro, 0), CASE WHEN ev.cost_micro IS NULL THEN 1 ELSE 0 END
        FROM ev
        ON CONFLICT (owner_id, day, key_id, model) DO UPDATE SET
            turns = t.turns + 1, errors = t.errors + EXCLUDED.errors,
            input_tokens = t.input_tokens + EXCLUDED.input_tokens,
            output_tokens = t.output_tokens + EXCLUDED.output_tokens,
            cached_tokens = t.cached_tokens + EXCLUDED.cached_tokens,
            reasoning_tokens = t.reasoning_tokens + EXCLUDED.reasoning_tokens,
            cost_micro = t.cost_micro + EXCLUDED.cost_micro,
            unpriced_turns = t.unpriced_turns + EXCLUDED.unpriced_turns
    )""",
    """conversation AS (
        INSERT INTO usage_usageconversationdaily AS t (owner_id, day, conversation_id, turns,
            input_tokens, output_tokens, cost_micro, unpriced_turns)
        SELECT %(owner)s, %(day)s, %(conversation_id)s::uuid, 1, %(input)s, %(output)s,
               COALESCE(ev.cost_micro, 0), CASE WHEN ev.cost_micro IS NULL THEN 1 ELSE 0 END
        FROM ev WHERE %(conversation_id)s::uuid IS NOT NULL
        ON CONFLICT (owner_id, day, conversation_id) DO UPDATE SET
            turns = t.turns + 1,
            input_tokens = t.input_tokens + EXCLUDED.input_tokens,
            output_tokens = t.output_tokens + EXCLUDED.output_tokens,
            cost_micro = t.cost_micro + EXCLUDED.cost_micro,
            unpriced_turns = t.unpriced_turns + EXCLUDED.unpriced_turns
    )""",
    """stamp AS (
        INSERT INTO usage_rollupstamp AS t (owner_id, stamp)
        SELECT %(owner)s, %(stamp)s FROM ev
        ON CONFLICT (owner_id) DO UPDATE SET stamp = EXCLUDED.stamp
    )""",
    """caps AS (
        SELECT id, key_id, limit_micro FROM usage_spendcap
        WHERE owner_id = %(owner)s AND key_id IN (%(no_key)s, %(key_id)s)
          AND EXISTS (SELECT 1 FROM ev)
    )""",
    """res AS (
        DELETE FROM usage_reservation
        WHERE message_id = %(message_id)s AND EXISTS (SELECT 1 FROM caps)
        RETURNING owner_id, key_id, month, amount_micro
    )""",
    """spend AS (
        INSERT INTO usage_monthlyspend AS t (owner_id, key_id, month, spent_micro,
            reserved_micro, warned)
        SELECT %(owner)s, caps.key_id, COALESCE((SELECT month FROM res), %(month)s),
               COALESCE((SELECT cost_micro FROM ev), 0), 0, false
        FROM caps
        ON CONFLICT (owner_id, key_id, month) DO UPDATE SET
            spent_micro = t.spent_micro + EXCLUDED.spent_micro,
            reserved_micro = t.reserved_micro - COALESCE((
                SELECT res.amount_micro FROM res
                WHERE res.owner_id = t.owner_id AND res.month = t.month
                  AND t.key_id IN (%(no_key)s, res.key_id)
            ), 0)
        RETURNING key_id, month, spent_micro, warned
    )""",
    """unreserve AS (
        UPDATE usage_monthlyspend AS t SET reserved_micro = t.reserved_micro - res.amount_micro
        FROM res
        WHERE t.owner_id = res.owner_id AND t.month = res.month
          AND t.key_id IN (%(no_key)s, res.key_id)
          AND t.key_id NOT IN (SELECT key_id FROM caps)
    )""",
]
# One row per recorded event (none for a duplicate), repeated per capped ledger it updated.
_RECORD_RESULT = (
    "\nSELECT "  # noqa: S608 (constants only)
    + OPERATOR_ACTIVITY_RACED
    + """, ledger.cap_id, ledger.limit_micro, ledger.month, ledger.spent_micro, ledger.warned
    FROM ev LEFT JOIN (
        SELECT caps.id AS cap_id, caps.limit_micro, spend.month, spend.spent_micro, spend.warned
        FROM spend JOIN caps USING (key_id)
    ) AS ledger ON true"""
)


_RECORD_SQL = "WITH " + ",\n".join(_RECORD_CTES + OPERATOR_ROLLUPS_CTES) + _RECORD_RESULT
_RECORD_PARAM_TYPES = {
    "owner": "bigint",
    "message_id": "uuid",
    "conversation_id": "uuid",
    "event_key_id": "uuid",
    "key_id": "uuid",
    "no_key": "uuid",
    "key_label": "text",
    "preset": "text",
    "model": "text",
    "price_model": "text",
    "status": "text",
    "error_kind": "text",
    "errors": "integer",
    "input": "bigint",
    "output": "bigint",
    "cached": "bigint",
    "cache_write": "bigint",
    "reasoning": "bigint",
    "ttft": "integer",
    "latency": "integer",
    "day": "date",
    "month": "date",
    "now": "timestamptz",
    "stamp": "uuid",
    **OPERATOR_ROLLUPS_PARAM_TYPES,
}
_RECORD_PARAM_ORDER = list(_RECORD_PARAM_TYPES)
# The same statement for PREPARE: named parameters become $1, $2, ... in the order above.
_RECORD_PREPARE = "PREPARE byok_usage_record ({}) AS {}".format(
    ", ".join(_RECORD_PARAM_TYPES.values()),
    re.sub(
        r"%\((\w+)\)s",
        lambda match: f"${_RECORD_PARAM_ORDER.index(match.group(1)) + 1}",
        _RECORD_SQL,
    ),
)
_RECORD_EXECUTE = "EXECUTE byok_usage_record({})".format(
    ", ".join(["%s"] * len(_RECORD_PARAM_ORDER))
)


# The psycopg connections that have byok_usage_record prepared. A prepared statement lives
# as long as its server session, whichever pool checkout or Django wrapper uses it.
_prepared_on: weakref.WeakSet[Any] = weakref.WeakSet()


def _execute_record(cursor: Any, params: dict[str, object]) -> list[tuple[Any, ...]]:
    """Run the statement, prepared once per database session where allowed.

    Planning this statement takes three times as long as running it, so each session
    PREPAREs it the first time and EXECUTEs it from then on. Set
    BYOK_DB_PREPARED_STATEMENTS = False behind a pooler that shares server sessions between
    transactions (PgBouncer in transaction mode) or resets them (DISCARD ALL).
    """
    if not getattr(settings, "BYOK_DB_PREPARED_STATEMENTS", True):
        cursor.execute(_RECORD_SQL, params)
        return list(cursor.fetchall())
    session = connection.connection
    if session not in _prepared_on:
        cursor.execute(_RECORD_PREPARE)  # not transactional: stays even after a rollback
        _prepared_on.add(session)
    cursor.execute(_RECORD_EXECUTE, [params[name] for name in _RECORD_PARAM_ORDER])
    return list(cursor.fetchall())


def _record_in_one_statement(turn: TurnUsage, today: date) -> bool:
    """usage_record on PostgreSQL: one round trip, plus a few more only when a cap's warning
    threshold was just crossed (or, rarely, when the user's first activity row raced).

    Both of those re-check under a row lock, so even run apart from the statement (no
    caller's transaction) they act once: a warning not yet flagged is found again by the
    owner's next turn."""
    params: dict[str, object] = {
        "owner": turn.owner.pk,
        "message_id": turn.message_id,
        "conversation_id": turn.conversation_id,
        "event_key_id": turn.key_id,
        "key_id": turn.key_id or NO_KEY,
        "no_key": NO_KEY,
        "key_label": turn.key_label[:80],
        "preset": turn.preset,
        "model": turn.model[:200],
        "price_model": turn.model,
        "status": turn.status,
        "error_kind": turn.error_kind[:32],
        "errors": 1 if turn.status == UsageEvent.Status.ERROR else 0,
        "input": turn.tokens.input,
        "output": turn.tokens.output,
        "cached": turn.tokens.cached,
        "cache_write": turn.tokens.cache_write,
        "reasoning": turn.reasoning_tokens,
        "ttft": turn.ttft_ms,
        "latency": turn.latency_ms,
        "day": today,
        "month": month_start(today),
        "now": timezone.now(),
        "stamp": uuid.uuid4(),
        **operator_rollups_params(turn=turn, day=today),
    }
    # In the caller's transaction; without one, a single statement is atomic by itself.
    with connection.cursor() as cursor:
        rows = _execute_record(cursor, params)
    if not rows:
        return False  # recorded already: never twice
    raced = rows[0][0]
    crossed = [
        (cap_id, month)
        for _, cap_id, limit, month, spent, warned in rows
        if cap_id is not None and not warned and spent >= int(limit * CAP_WARNING_SHARE)
    ]
    if raced or crossed:
        with transaction.atomic(savepoint=False):
            if raced:
                operator_activity_record_again(owner_id=turn.owner.pk, day=today)
            if crossed:
                caps = SpendCap.objects.filter(pk__in=[cap_id for cap_id, _ in crossed])
                _warn_if_near_cap(turn.owner, list(caps), crossed[0][1])
    return True


def usage_rollups_changed(*, owner_ids: Iterable[int]) -> None:
    """Give each owner a new rollup stamp: their cached usage pages are stale from now on.

    usage_record does this itself; call it after changing rollups any other way.
    """
    for owner_id in owner_ids:
        columns, params = _column_values(RollupStamp, {"owner_id": owner_id, "stamp": uuid.uuid4()})
        table = connection.ops.quote_name(RollupStamp._meta.db_table)
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES (%s, %s) "  # noqa: S608
            f"ON CONFLICT ({columns[0]}) DO UPDATE SET {columns[1]} = excluded.{columns[1]}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)


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
    """Give back a turn's reservation without spending it (the call never happened).

    Most turns hold none (no cap, or settled when the turn was stored): a plain read finds
    that without a write transaction, which on SQLite would queue for the write lock. Only
    the turn's own worker thread makes a reservation (`budget_reserve`, right after its
    claim), and that thread releases it itself before the turn ends; the other callers (the
    web closing a queued turn, the reaper failing one long past its time limit) come before
    any reservation or long after it.
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
