"""Writes of the operator side: the dashboard rollups and the operator audit trail."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.http import HttpRequest

from ops.models import (
    ActivityDaily,
    ErrorDaily,
    LatencyDaily,
    ProviderDaily,
    UserActivity,
    latency_bucket,
)

if TYPE_CHECKING:
    from accounts.models import AuditEvent, User
    from usage.services import TurnUsage


def _bump(model: type[models.Model], lookup: dict[str, object], **counts: int) -> None:
    """Add `counts` to the row `lookup`, creating it on first use (race-safe)."""
    increments = {name: F(name) + value for name, value in counts.items() if value}
    manager = model._default_manager
    if not increments or manager.filter(**lookup).update(**increments):
        return
    try:
        with transaction.atomic():
            manager.create(**lookup, **counts)
    except IntegrityError:  # another turn created it first
        manager.filter(**lookup).update(**increments)


def operator_rollups_record(*, turn: TurnUsage, day: date, cost_micro: int | None) -> None:
    """Add one newly recorded turn to the operator dashboard's rollups.

    Call once per new UsageEvent, in the transaction that created it (usage_record does,
    after its insert succeeded): per-provider day totals, errors by class, latency
    histograms and the owner's last active day. Metadata only.
    """
    preset = turn.preset
    is_error = turn.status == "error"
    owner_id = turn.owner.pk
    _bump(
        ProviderDaily,
        {"day": day, "preset": preset},
        turns=1,
        errors=1 if is_error else 0,
        input_tokens=turn.tokens.input,
        output_tokens=turn.tokens.output,
        cached_tokens=turn.tokens.cached,
        cost_micro=cost_micro or 0,
        unpriced_turns=1 if cost_micro is None else 0,
    )
    if is_error:
        _bump(
            ErrorDaily,
            {"day": day, "preset": preset, "error_kind": turn.error_kind[:32] or "unknown"},
            count=1,
        )
    for metric, value in (
        (LatencyDaily.Metric.TTFT, turn.ttft_ms),
        (LatencyDaily.Metric.TOTAL, turn.latency_ms),
    ):
        if value is not None:
            _bump(
                LatencyDaily,
                {"day": day, "preset": preset, "metric": metric, "bucket": latency_bucket(value)},
                count=1,
            )
    _user_active_on(owner_id, day)


def _user_active_on(owner_id: int, day: date) -> None:
    """Move the user's last active day to `day` and keep ActivityDaily's counts in step.

    At most one write per user and day: later turns of the day find nothing to do.
    """
    if UserActivity.objects.filter(user_id=owner_id, last_turn_on__gte=day).exists():
        return
    with transaction.atomic():
        row = UserActivity.objects.select_for_update().filter(user_id=owner_id).first()
        if row is None:
            try:
                with transaction.atomic():
                    UserActivity.objects.create(user_id=owner_id, last_turn_on=day)
            except IntegrityError:  # the user's other turn got there first
                return _user_active_on(owner_id, day)
        elif row.last_turn_on < day:
            UserActivity.objects.filter(user_id=owner_id).update(last_turn_on=day)
            ActivityDaily.objects.filter(day=row.last_turn_on).update(users=F("users") - 1)
        else:
            return None
        _bump(ActivityDaily, {"day": day}, users=1)
    return None


def operator_rollups_params(*, turn: TurnUsage, day: date) -> dict[str, object]:
    """The parameters of OPERATOR_ROLLUPS_CTES for one newly recorded turn."""
    return {
        "ops_owner": turn.owner.pk,
        "ops_day": day,
        "ops_preset": turn.preset,
        "ops_errors": 1 if turn.status == "error" else 0,
        "ops_input": turn.tokens.input,
        "ops_output": turn.tokens.output,
        "ops_cached": turn.tokens.cached,
        "ops_error_kind": turn.error_kind[:32] or "unknown",
        "ops_ttft_bucket": None if turn.ttft_ms is None else latency_bucket(turn.ttft_ms),
        "ops_total_bucket": None if turn.latency_ms is None else latency_bucket(turn.latency_ms),
    }


_OPS_PROVIDER_CTE = """ops_provider AS (
        INSERT INTO ops_providerdaily AS t (day, preset, turns, errors, input_tokens,
            output_tokens, cached_tokens, cost_micro, unpriced_turns)
        SELECT %(ops_day)s, %(ops_preset)s, 1, %(ops_errors)s, %(ops_input)s, %(ops_output)s,
               %(ops_cached)s, COALESCE(ev.cost_micro, 0),
               CASE WHEN ev.cost_micro IS NULL THEN 1 ELSE 0 END
        FROM ev
        ON CONFLICT (day, preset) DO UPDATE SET
            turns = t.turns + 1, errors = t.errors + EXCLUDED.errors,
            input_tokens = t.input_tokens + EXCLUDED.input_tokens,
            output_tokens = t.output_tokens + EXCLUDED.output_tokens,
            cached_tokens = t.cached_tokens + EXCLUDED.cached_tokens,
            cost_micro = t.cost_micro + EXCLUDED.cost_micro,
            unpriced_turns = t.unpriced_turns + EXCLUDED.unpriced_turns
    )"""
_OPS_ERROR_CTE = """ops_error AS (
        INSERT INTO ops_errordaily AS t (day, preset, error_kind, count)
        SELECT %(ops_day)s, %(ops_preset)s, %(ops_error_kind)s, 1 FROM ev
        WHERE %(ops_errors)s = 1
        ON CONFLICT (day, preset, error_kind) DO UPDATE SET count = t.count + 1
    )"""
_OPS_LATENCY_CTE = """ops_latency AS (
        INSERT INTO ops_latencydaily AS t (day, preset, metric, bucket, count)
        SELECT %(ops_day)s, %(ops_preset)s, v.metric, v.bucket, 1
        FROM ev CROSS JOIN (VALUES ('ttft', %(ops_ttft_bucket)s::smallint),
                                   ('total', %(ops_total_bucket)s::smallint)) AS v (metric, bucket)
        WHERE v.bucket IS NOT NULL
        ON CONFLICT (day, preset, metric, bucket) DO UPDATE SET count = t.count + 1
    )"""
# The user's last active day: read first (locked: the latest version), then moved forward
# from it; ActivityDaily loses the user on the old day and gains them on the new one.
_OPS_ACTIVITY_CTES = [
    """ops_active_before AS (
        SELECT last_turn_on FROM ops_useractivity
        WHERE user_id = %(ops_owner)s AND EXISTS (SELECT 1 FROM ev)
        FOR UPDATE
    )""",
    """ops_active_moved AS (
        UPDATE ops_useractivity AS t SET last_turn_on = %(ops_day)s
        FROM ops_active_before AS b
        WHERE t.user_id = %(ops_owner)s AND b.last_turn_on < %(ops_day)s
        RETURNING b.last_turn_on AS previous
    )""",
    """ops_active_first AS (
        INSERT INTO ops_useractivity (user_id, last_turn_on)
        SELECT %(ops_owner)s, %(ops_day)s FROM ev
        WHERE NOT EXISTS (SELECT 1 FROM ops_active_before)
        ON CONFLICT (user_id) DO NOTHING
        RETURNING user_id
    )""",
    """ops_activity_left AS (
        UPDATE ops_activitydaily SET users = users - 1
        WHERE day = (SELECT previous FROM ops_active_moved)
    )""",
    """ops_activity_joined AS (
        INSERT INTO ops_activitydaily AS t (day, users)
        SELECT %(ops_day)s, 1
        FROM (SELECT 1 FROM ops_active_moved UNION ALL SELECT 1 FROM ops_active_first) AS m
        ON CONFLICT (day) DO UPDATE SET users = t.users + 1
    )""",
]
# operator_rollups_record as data-modifying CTEs (PostgreSQL), to put in one statement with
# usage_record's. The statement must have a CTE named `ev` that returns the newly inserted
# usage event's `cost_micro` (no row when the turn was recorded already: then nothing here
# changes); parameters come from operator_rollups_params. Same rows and counts as
# operator_rollups_record. The user's last active day is read with FOR UPDATE, so concurrent
# turns of one user move it once. When another turn inserted the user's first UserActivity
# row meanwhile, OPERATOR_ACTIVITY_RACED is true in the statement's result: then call
# operator_activity_record_again, which settles it the slow, exact way.
OPERATOR_ROLLUPS_CTES = [_OPS_PROVIDER_CTE, _OPS_ERROR_CTE, _OPS_LATENCY_CTE, *_OPS_ACTIVITY_CTES]
OPERATOR_ROLLUPS_PARAM_TYPES = {
    "ops_owner": "bigint",
    "ops_day": "date",
    "ops_preset": "text",
    "ops_errors": "integer",
    "ops_input": "bigint",
    "ops_output": "bigint",
    "ops_cached": "bigint",
    "ops_error_kind": "text",
    "ops_ttft_bucket": "smallint",
    "ops_total_bucket": "smallint",
}

# True in the statement of OPERATOR_ROLLUPS_CTES when another turn created the user's
# UserActivity row between this statement's snapshot and its insert.
OPERATOR_ACTIVITY_RACED = (
    "(NOT EXISTS (SELECT 1 FROM ops_active_before) AND NOT EXISTS (SELECT 1 FROM ops_active_first))"
)


def operator_activity_record_again(*, owner_id: int, day: date) -> None:
    """Move the user's last active day after OPERATOR_ACTIVITY_RACED (rare), exactly."""
    _user_active_on(owner_id, day)


def operator_audit(
    request: HttpRequest,
    *,
    owner: User,
    action: str,
    target_id: str = "",
    target_label: str = "",
    details: dict[str, object] | None = None,
) -> AuditEvent:
    """Record an operator's action in `owner`'s security log: actor, target, what, IP, when.

    SECURITY: `details` carries metadata only (field names, counts), never a secret.
    """
    from accounts.services import audit_request

    return audit_request(
        request,
        owner=owner,
        actor=request.user,  # type: ignore[arg-type]
        action=action,
        target_id=target_id,
        target_label=target_label,
        details=details,
    )
