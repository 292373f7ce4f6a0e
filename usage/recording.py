"""The write per recorded turn, declared once.

A recorded turn is one `UsageEvent` (unique per message: recording twice changes nothing)
and what it adds to the rollups: the user's per day, key and model and per conversation,
the user's rollup stamp (the usage pages' cache key), the operators' per provider, error
class and latency bucket and the user's last active day, and, under a spend cap, the cap
ledgers. The cost is `usage.prices.cost_micro` of the price the turn ran at, computed here
in Python and nowhere else.

`EVENT` and `ROLLUPS` declare every row the turn writes as an `Upsert` (table, conflict
columns, the value of each column, what is added or replaced when the row exists). Each
declaration renders two ways, so the rule is written once:

- as a plain `INSERT ... VALUES ... ON CONFLICT` statement (every database; the one used on
  SQLite, one statement after the other, in the caller's transaction);
- as a data-modifying CTE reading `FROM ev` (PostgreSQL: the event and every rollup in one
  statement, one round trip, prepared once per connection), which writes nothing when the
  event was recorded already.

Both renderings end with the same read (`READ_AFTER`): whether a cap covers the turn. Only
then does more run, in Python and the same on every database: settling the cap ledgers
(`usage.services.budget_settle`).
"""

from __future__ import annotations

import functools
import re
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from usage.models import (
    NO_KEY,
    ErrorDaily,
    LatencyDaily,
    ProviderDaily,
    RollupStamp,
    UsageConversationDaily,
    UsageDaily,
    UsageEvent,
    UserActivity,
    latency_bucket,
)
from usage.prices import Price, TokenCounts, cost_micro
from usage.services import budget_settle
from usage.upserts import Upsert, upsert

# --- what a turn reports ---------------------------------------------------------------


@dataclass(frozen=True)
class TurnUsage:
    """What a finished, stopped or failed turn reports for usage.

    `price` is the price the turn ran at (looked up once, when it started; None: unknown).
    `owner_id` is the user's primary key: usage needs nothing else of the user.
    """

    owner_id: int
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
    price: Price | None
    estimated: bool = False
    purpose: str = "chat"  # UsageEvent.Purpose: a chat reply, or a conversation's title

    @property
    def cost_micro(self) -> int | None:
        """The turn's cost, None when its price is unknown (never $0 for "unknown")."""
        return None if self.price is None else cost_micro(self.price, self.tokens)


# --- the declaration -------------------------------------------------------------------


# The usage event, then every rollup it adds to; their parameters come from `_params`.
EVENT = Upsert(
    "ev",
    UsageEvent,
    conflict=("message_id",),
    values={
        "owner_id": "owner",
        "message_id": "message_id",
        "conversation_id": "conversation_id",
        "key_id": "key_id",
        "key_label": "key_label",
        "preset": "preset",
        "model": "model",
        "status": "status",
        "purpose": "purpose",
        "error_kind": "error_kind",
        "input_tokens": "input",
        "output_tokens": "output",
        "cached_tokens": "cached",
        "cache_write_tokens": "cache_write",
        "reasoning_tokens": "reasoning",
        "tokens_estimated": "estimated",
        "price_input": "price_input",
        "price_output": "price_output",
        "price_cache_read": "price_cache_read",
        "price_cache_write": "price_cache_write",
        "cost_micro": "cost",
        "ttft_ms": "ttft",
        "latency_ms": "latency",
        "day": "day",
        "created_at": "now",
    },
)
_DAILY_COUNTS: dict[str, str | int] = {
    "turns": 1,
    "errors": "errors",
    "input_tokens": "input",
    "output_tokens": "output",
    "cached_tokens": "cached",
    "reasoning_tokens": "reasoning",
    "cost_micro": "cost_or_zero",
    "unpriced_turns": "unpriced",
}
_CONVERSATION_COUNTS: dict[str, str | int] = {
    "turns": 1,
    "input_tokens": "input",
    "output_tokens": "output",
    "cost_micro": "cost_or_zero",
    "unpriced_turns": "unpriced",
}
_PROVIDER_COUNTS: dict[str, str | int] = {
    "turns": 1,
    "errors": "errors",
    "input_tokens": "input",
    "output_tokens": "output",
    "cached_tokens": "cached",
    "cost_micro": "cost_or_zero",
    "unpriced_turns": "unpriced",
}
ROLLUPS = (
    Upsert(
        "daily",
        UsageDaily,
        conflict=("owner_id", "day", "key_id", "model"),
        values={
            "owner_id": "owner",
            "day": "day",
            "key_id": "scope_key",
            "model": "model",
            "key_label": "key_label",
            "preset": "preset",
            **_DAILY_COUNTS,
        },
        add=tuple(_DAILY_COUNTS),
    ),
    Upsert(
        "conversation",
        UsageConversationDaily,
        conflict=("owner_id", "day", "conversation_id"),
        values={
            "owner_id": "owner",
            "day": "day",
            "conversation_id": "conversation_id",
            **_CONVERSATION_COUNTS,
        },
        add=tuple(_CONVERSATION_COUNTS),
        when="has_conversation",
    ),
    Upsert(
        "stamp",
        RollupStamp,
        conflict=("owner_id",),
        values={"owner_id": "owner", "stamp": "stamp"},
        replace=("stamp",),
    ),
    # The operators' (ops.selectors reads them).
    Upsert(
        "ops_provider",
        ProviderDaily,
        conflict=("day", "preset"),
        values={"day": "day", "preset": "preset", **_PROVIDER_COUNTS},
        add=tuple(_PROVIDER_COUNTS),
    ),
    Upsert(
        "ops_error",
        ErrorDaily,
        conflict=("day", "preset", "error_kind"),
        values={"day": "day", "preset": "preset", "error_kind": "error_class", "count": 1},
        add=("count",),
        when="is_error",
    ),
    Upsert(
        "ops_active",
        UserActivity,
        conflict=("user_id",),
        values={"user_id": "owner", "last_turn_on": "day"},
        replace=("last_turn_on",),
        only_if_greater="last_turn_on",
    ),
    Upsert(
        "ops_ttft",
        LatencyDaily,
        conflict=("day", "preset", "metric", "bucket"),
        values={
            "day": "day",
            "preset": "preset",
            "metric": "ttft_metric",
            "bucket": "ttft_bucket",
            "count": 1,
        },
        add=("count",),
        when="has_ttft",
    ),
    Upsert(
        "ops_total",
        LatencyDaily,
        conflict=("day", "preset", "metric", "bucket"),
        values={
            "day": "day",
            "preset": "preset",
            "metric": "total_metric",
            "bucket": "total_bucket",
            "count": 1,
        },
        add=("count",),
        when="has_latency",
    ),
)
OPERATOR_ROLLUPS = tuple(rollup for rollup in ROLLUPS if rollup.name.startswith("ops_"))

# What decides whether more must run: whether a spend cap covers the turn.
READ_AFTER = (
    "EXISTS (SELECT 1 FROM usage_spendcap WHERE owner_id = {owner} "
    "AND key_id IN ({no_key}, {scope_key}))"
)

# PostgreSQL's type of each parameter (PREPARE declares them; plain execution casts).
PARAM_TYPES = {
    "owner": "bigint",
    "message_id": "uuid",
    "conversation_id": "uuid",
    "key_id": "uuid",
    "scope_key": "uuid",
    "no_key": "uuid",
    "key_label": "text",
    "preset": "text",
    "model": "text",
    "status": "text",
    "purpose": "text",
    "error_kind": "text",
    "error_class": "text",
    "errors": "integer",
    "is_error": "boolean",
    "input": "bigint",
    "output": "bigint",
    "cached": "bigint",
    "cache_write": "bigint",
    "reasoning": "bigint",
    "estimated": "boolean",
    "price_input": "bigint",
    "price_output": "bigint",
    "price_cache_read": "bigint",
    "price_cache_write": "bigint",
    "cost": "bigint",
    "cost_or_zero": "bigint",
    "unpriced": "integer",
    "ttft": "integer",
    "latency": "integer",
    "ttft_metric": "text",
    "total_metric": "text",
    "ttft_bucket": "smallint",
    "total_bucket": "smallint",
    "has_ttft": "boolean",
    "has_latency": "boolean",
    "has_conversation": "boolean",
    "day": "date",
    "now": "timestamptz",
    "stamp": "uuid",
}


def _params(turn: TurnUsage, day: date, cost: int | None) -> dict[str, Any]:
    price = turn.price
    return {
        "owner": turn.owner_id,
        "message_id": turn.message_id,
        "conversation_id": turn.conversation_id,
        "key_id": turn.key_id,
        "scope_key": turn.key_id or NO_KEY,
        "no_key": NO_KEY,
        "key_label": turn.key_label[:80],
        "preset": turn.preset,
        "model": turn.model[:200],
        "status": turn.status,
        "purpose": turn.purpose,
        "error_kind": turn.error_kind[:32],
        "error_class": turn.error_kind[:32] or "unknown",
        "errors": 1 if turn.status == UsageEvent.Status.ERROR else 0,
        "is_error": turn.status == UsageEvent.Status.ERROR,
        "input": turn.tokens.input,
        "output": turn.tokens.output,
        "cached": turn.tokens.cached,
        "cache_write": turn.tokens.cache_write,
        "reasoning": turn.reasoning_tokens,
        "estimated": turn.estimated,
        "price_input": price.input if price else None,
        "price_output": price.output if price else None,
        "price_cache_read": price.cache_read if price else None,
        "price_cache_write": price.cache_write if price else None,
        "cost": cost,
        "cost_or_zero": cost or 0,
        "unpriced": 1 if cost is None else 0,
        "ttft": turn.ttft_ms,
        "latency": turn.latency_ms,
        "ttft_metric": LatencyDaily.Metric.TTFT.value,
        "total_metric": LatencyDaily.Metric.TOTAL.value,
        "ttft_bucket": None if turn.ttft_ms is None else latency_bucket(turn.ttft_ms),
        "total_bucket": None if turn.latency_ms is None else latency_bucket(turn.latency_ms),
        "has_ttft": turn.ttft_ms is not None,
        "has_latency": turn.latency_ms is not None,
        "has_conversation": turn.conversation_id is not None,
        "day": day,
        "now": timezone.now(),
        "stamp": uuid.uuid4(),
    }


# --- writing ---------------------------------------------------------------------------


@dataclass
class Recorded:
    """What the write found: whether the event is new, and whether a cap covers the turn."""

    inserted: bool
    capped: bool = False


def usage_record(*, turn: TurnUsage) -> bool:
    """Record a turn's usage once: the event, every rollup and, under a cap, the ledgers
    (its reservation settled at the real cost).

    Returns False when the message was recorded already (a second call changes nothing).
    Call inside the transaction that stores the turn's outcome: everything here joins it.
    """
    day = timezone.localdate()
    params = _params(turn, day, turn.cost_micro)
    with transaction.atomic(savepoint=False):
        if connection.vendor == "postgresql":
            recorded = _write_in_one_statement(params)
        else:
            recorded = _write_step_by_step(params)
        if not recorded.inserted:
            return False  # recorded already: never twice
        if recorded.capped:
            budget_settle(
                owner_id=turn.owner_id,
                message_id=turn.message_id,
                key_id=turn.key_id or NO_KEY,
                cost=turn.cost_micro or 0,
            )
    return True


def _read_after(render: Callable[[str], str]) -> str:
    return READ_AFTER.format(
        owner=render("owner"), no_key=render("no_key"), scope_key=render("scope_key")
    )


def _recorded(row: tuple[Any, ...], inserted: bool) -> Recorded:
    (capped,) = row
    return Recorded(inserted=inserted, capped=bool(capped))


def _for_database(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as this database stores them (SQLite keeps UUIDs as hex, dates as text),
    exactly as the models' fields would write them."""
    if connection.features.has_native_uuid_field:
        return params
    ops = connection.ops
    prepared: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, uuid.UUID):
            value = value.hex
        elif isinstance(value, datetime):
            value = ops.adapt_datetimefield_value(value)
        elif isinstance(value, date):
            value = ops.adapt_datefield_value(value)
        prepared[name] = value
    return prepared


def _write_step_by_step(params: dict[str, Any]) -> Recorded:
    """Every declared row as its own statement, in order (SQLite; valid on any database)."""
    statements = _statements()
    params = _for_database(params)
    with connection.cursor() as cursor:
        cursor.execute(statements["ev"], params)
        if cursor.rowcount != 1:
            return Recorded(inserted=False)
        for rollup in ROLLUPS:
            if rollup.when is None or params[rollup.when]:
                cursor.execute(statements[rollup.name], params)
        cursor.execute(statements["read"], params)
        return _recorded(cursor.fetchone(), inserted=True)


@functools.cache
def _statements() -> dict[str, str]:
    """The declarations as separate statements, rendered once per process."""
    statements = {rollup.name: rollup.sql() for rollup in (EVENT, *ROLLUPS)}
    statements["read"] = f"SELECT {_read_after(lambda name: f'%({name})s')}"
    return statements


def _typed(placeholder: str) -> str:
    name = placeholder[2:-2]
    return f"CAST({placeholder} AS {PARAM_TYPES[name]})"


@functools.cache
def _one_statement_sql() -> str:
    """The declaration as one PostgreSQL statement: the event, each rollup reading `FROM
    ev` (nothing when the event existed already), then the event count and `READ_AFTER`."""
    ctes = [f"ev AS ({EVENT.sql(cast=_typed)} RETURNING 1)"]
    ctes += [f"{rollup.name} AS ({rollup.sql(from_event=True, cast=_typed)})" for rollup in ROLLUPS]
    read = _read_after(lambda name: _typed(f"%({name})s"))
    # Table and column names come from the models, every value is a parameter.
    select = f"\nSELECT (SELECT count(*) FROM ev), {read}"  # noqa: S608
    return "WITH " + ",\n".join(ctes) + select


_PARAM_ORDER = list(PARAM_TYPES)
_prepared_on: weakref.WeakSet[Any] = weakref.WeakSet()  # psycopg connections with it


def _prepare_sql(sql: str) -> str:
    """The statement for PREPARE: named parameters become $1, $2, ... in PARAM_TYPES order."""
    numbered = re.sub(
        r"%\((\w+)\)s", lambda match: f"${_PARAM_ORDER.index(match.group(1)) + 1}", sql
    )
    return "PREPARE byok_usage_record ({}) AS {}".format(", ".join(PARAM_TYPES.values()), numbered)


def _write_in_one_statement(params: dict[str, Any]) -> Recorded:
    """The whole declaration in one round trip, prepared once per database session.

    Planning this statement takes three times as long as running it, so each session
    PREPAREs it the first time and EXECUTEs it from then on. Set
    BYOK_DB_PREPARED_STATEMENTS = False behind a pooler that shares server sessions between
    transactions (PgBouncer in transaction mode) or resets them (DISCARD ALL).
    """
    sql = _one_statement_sql()
    with connection.cursor() as cursor:
        if not getattr(settings, "BYOK_DB_PREPARED_STATEMENTS", True):
            cursor.execute(sql, params)
        else:
            session = connection.connection
            if session not in _prepared_on:
                cursor.execute(_prepare_sql(sql))  # not transactional: outlives a rollback
                _prepared_on.add(session)
            placeholders = ", ".join(["%s"] * len(_PARAM_ORDER))
            cursor.execute(
                f"EXECUTE byok_usage_record({placeholders})",
                [params[name] for name in _PARAM_ORDER],
            )
        count, *rest = cursor.fetchone()
    return _recorded(tuple(rest), inserted=count == 1)


# --- the slow paths: Python, the same on every database ---------------------------------


def operator_rollups_record(*, turn: TurnUsage, day: date, cost_micro: int | None) -> None:
    """Add a turn that cost `cost_micro` to the operators' rollups alone (rebuilding them
    from the events, or seeding tests), with the same declarations as `usage_record`."""
    params = _for_database(_params(turn, day, cost_micro))
    with connection.cursor() as cursor:
        for rollup in OPERATOR_ROLLUPS:
            if rollup.when is None or params[rollup.when]:
                cursor.execute(rollup.sql(), params)


def usage_rollups_changed(*, owner_ids: list[int]) -> None:
    """Give each owner a new rollup stamp: their cached usage pages are stale from now on.

    usage_record does this itself; call it after changing rollups any other way.
    """
    for owner_id in owner_ids:
        upsert(RollupStamp, conflict={"owner_id": owner_id}, replace={"stamp": uuid.uuid4()})
