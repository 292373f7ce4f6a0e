"""Per-user limits in Redis: messages per minute (the one rate limiter, core.ratelimit) and
replies in flight (a slot per running turn), both atomic. Only admitted turns count against
the minute: it is checked last, and a turn refused after it gives its hit back.

Defaults come from settings; operators override them per user (RateLimitOverride).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from django.conf import settings

from accounts.models import User
from core.ratelimit import window_hit, window_unhit
from core.redis import get_redis
from usage.models import RateLimitOverride

logger = logging.getLogger(__name__)

# Add `member` to the set of running turns unless it is full; entries older than the turn
# hard limit are dropped first, so a turn whose worker died cannot hold a slot forever.
_ACQUIRE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limits:
    turns_per_minute: int
    concurrent_turns: int


def limits_for(user: User) -> Limits:
    override = RateLimitOverride.objects.filter(user=user).first()
    return Limits(
        turns_per_minute=(override and override.turns_per_minute)
        or settings.BYOK_RATE_TURNS_PER_MINUTE,
        concurrent_turns=(override and override.concurrent_turns)
        or settings.BYOK_MAX_CONCURRENT_TURNS,
    )


def _running_key(user_id: object) -> str:
    return f"byok:rl:running:{user_id}"


def _minute_key(user_id: object) -> str:
    return f"byok:rl:turns:{user_id}"


def turn_admit(*, user: User, message_id: object) -> None:
    """Count a new turn against the user's limits, or raise RateLimited saying when to retry.

    The slot first, the minute last: a turn refused for its slot (or for anything checked
    before this) never counts against the minute, and a turn the minute refuses gives its
    slot back. Each step is atomic in Redis, so two sends at once cannot both take the last
    of either.
    """
    limits = limits_for(user)
    now = time.time()
    stale_before = now - settings.BYOK_TURN_HARD_LIMIT - 60
    acquired = get_redis().eval(
        _ACQUIRE_SLOT,
        1,
        _running_key(user.pk),
        stale_before,
        limits.concurrent_turns,
        now,
        str(message_id),
        settings.BYOK_TURN_HARD_LIMIT + 120,
    )
    if not int(acquired):
        raise RateLimited(
            f"You have {limits.concurrent_turns} replies being written at once, the most "
            "allowed. You can send again as soon as one finishes.",
            retry_after=5,
        )
    try:
        wait = window_hit(_minute_key(user.pk), limit=limits.turns_per_minute, window_seconds=60)
    except BaseException:
        turn_release(user_id=user.pk, message_id=message_id)
        raise
    if wait:
        turn_release(user_id=user.pk, message_id=message_id)
        raise RateLimited(
            f"You have sent {limits.turns_per_minute} messages in the last minute, the most "
            f"allowed. You can send again in {wait} seconds.",
            retry_after=wait,
        )


def turn_unadmit(*, user_id: object, message_id: object) -> None:
    """Give back all `turn_admit` took for a turn that will not run after all: its slot and
    its hit on the minute (a turn that ran keeps the hit: `turn_release`)."""
    turn_release(user_id=user_id, message_id=message_id)
    try:
        window_unhit(_minute_key(user_id))
    except redis.RedisError:
        logger.warning("could not give back the minute hit of message %s", message_id)


def turn_release(*, user_id: object, message_id: object) -> None:
    """Free the turn's concurrency slot (idempotent). With Redis away, the slot goes stale
    and is dropped by the next admission."""
    try:
        get_redis().zrem(_running_key(user_id), str(message_id))
    except redis.RedisError:
        logger.warning("could not free the turn slot of message %s", message_id)


def running_turns(*, user_id: object) -> int:
    """How many of the user's turns hold a concurrency slot now."""
    return int(get_redis().zcard(_running_key(user_id)))
