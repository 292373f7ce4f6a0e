"""The one rate limiter: at most `limit` hits per window, counted atomically in Redis.

A window opens with its first hit and lasts `window_seconds`; a hit refused because the
window is full is not counted, so retrying does not push the window further out; a hit for
something that then did not happen can be given back (`window_unhit`). Used for messages
per minute (usage.ratelimits) and password reset requests (accounts.views).
"""

from __future__ import annotations

import math

from core.redis import get_redis

# KEYS[1] the window; ARGV[1] limit, ARGV[2] window in ms. Returns 0 when the hit is
# counted, else the window's milliseconds left.
_HIT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then return left end
  redis.call('DEL', KEYS[1])
  used = 0
end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS[1] the window. One hit less, if the window still holds any (never below zero, and
# never a window of its own: a window that has ended has nothing to give back).
_UNHIT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used > 0 then redis.call('DECR', KEYS[1]) end
return 0
"""


def window_hit(key: str, *, limit: int, window_seconds: float) -> int:
    """Count one hit in the window `key` unless it holds `limit` already.

    Returns 0 when the hit is counted (allowed), else the whole seconds until the window
    ends (refused). Raises redis.RedisError when Redis cannot answer: each caller decides
    whether that refuses or allows.
    """
    left_ms = int(get_redis().eval(_HIT, 1, key, limit, int(window_seconds * 1000)))
    return 0 if left_ms <= 0 else max(1, math.ceil(left_ms / 1000))


def window_unhit(key: str) -> None:
    """Give back one hit counted by `window_hit` (what it counted did not happen after all).
    Raises redis.RedisError when Redis cannot answer."""
    get_redis().eval(_UNHIT, 1, key)
