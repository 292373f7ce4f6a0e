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
