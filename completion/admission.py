"""Admission: what a surface checks on the web before it queues a call (the engine checks
again, exactly, on the worker)."""

from __future__ import annotations

import logging
import uuid

from redis import RedisError

from accounts.models import User
from completion.engine import Refused
from usage import ratelimits
from usage.models import NO_KEY
from usage.services import BudgetError, budget_check_before_send

logger = logging.getLogger(__name__)


def admit(*, owner: User, call_id: uuid.UUID, key_id: uuid.UUID | None, key_label: str) -> None:
    """Refuse a new call at once when a spend cap is used up, then count it against the
    owner's rate limits. Raises Refused with what to do.

    The cap is read first (it takes nothing), so a call it refuses does not count against
    the rate limits; only calls admitted here do. What is taken is given back when the call
    closes (`completion.engine.close`), or by `release` when the surface does not queue it
    after all; a slot never given back goes stale after the turn's hard time limit.
    """
    try:
        budget_check_before_send(owner=owner, key_id=key_id or NO_KEY, key_label=key_label)
    except BudgetError as error:
        raise Refused("budget", error.message) from None
    try:
        ratelimits.turn_admit(user=owner, message_id=call_id)
    except ratelimits.RateLimited as error:
        raise Refused("rate_limited", error.message) from None
    except RedisError:
        logger.exception("rate limiter unavailable")
        raise Refused(
            "unavailable",
            "BYOK cannot reach its message queue right now. Nothing was sent; try again in a "
            "moment.",
        ) from None


def release(*, owner: User, call_id: uuid.UUID) -> None:
    """Give back what `admit` took for a call that will not be queued: its slot and its
    place in the messages-per-minute count."""
    ratelimits.turn_unadmit(user_id=owner.pk, message_id=call_id)
