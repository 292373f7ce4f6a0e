"""Live turn streams in Redis: one stream per assistant message, `byok:turn:<message id>`.

The worker appends `delta` entries and ends with one `done` or `error` entry; the SSE view
replays from any entry id (`Last-Event-ID`) and then waits for more. Streams are bounded and
expire, so Redis never holds a conversation for long; the database has the final text.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

from byok_site.redis import get_redis

logger = logging.getLogger(__name__)

EVENT_DELTA = "delta"
EVENT_DONE = "done"
EVENT_ERROR = "error"
FINAL_EVENTS = frozenset({EVENT_DONE, EVENT_ERROR})


def stream_key(message_id: object) -> str:
    return f"byok:turn:{message_id}"


def cancel_key(message_id: object) -> str:
    return f"byok:turn:{message_id}:cancel"


class TurnPublisher:
    """Appends a turn's events to its stream. Never raises: a Redis outage must not lose the
    turn (the final text still lands in the database, and the SSE view serves it from there).
    """

    def __init__(self, message_id: object) -> None:
        self.key = stream_key(message_id)
        self.client = get_redis()
        self.maxlen = settings.BYOK_TURN_STREAM_MAXLEN
        self.ttl = settings.BYOK_TURN_STREAM_TTL
        self.failed = False

    def _add(self, fields: dict[str, str]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.expire(self.key, self.ttl)
            pipe.execute()
        except redis.RedisError:
            if not self.failed:
                logger.warning(
                    "turn stream %s: Redis write failed; the reply is kept in the database",
                    self.key,
                )
            self.failed = True

    def reset(self) -> None:
        try:
            self.client.delete(self.key, cancel_key(self.key.removeprefix("byok:turn:")))
        except redis.RedisError:
            self.failed = True

    def delta(self, text: str) -> None:
        if text:
            self._add({"type": EVENT_DELTA, "text": text})

    def done(self, *, status: str, html: str, notice: str = "") -> None:
        self._add({"type": EVENT_DONE, "status": status, "html": html, "notice": notice})

    def error(self, *, message: str, action: str, html: str = "") -> None:
        self._add({"type": EVENT_ERROR, "message": message, "action": action, "html": html})


def request_cancel(message_id: object) -> None:
    get_redis().set(cancel_key(message_id), "1", ex=settings.BYOK_TURN_STREAM_TTL)


def cancel_requested(message_id: object) -> bool:
    try:
        return bool(get_redis().exists(cancel_key(message_id)))
    except redis.RedisError:
        return False


# --- async side (the SSE view) -------------------------------------------------------------

_async_clients: dict[tuple[str, int], aioredis.Redis] = {}
_async_lock = threading.Lock()


def get_async_redis() -> aioredis.Redis:
    """One asyncio Redis client (and pool) per process, URL and event loop."""
    loop = asyncio.get_running_loop()
    cache_key = (settings.REDIS_URL, id(loop))
    client = _async_clients.get(cache_key)
    if client is None:
        with _async_lock:
            client = _async_clients.get(cache_key)
            if client is None:
                client = aioredis.Redis.from_url(
                    settings.REDIS_URL, decode_responses=True, socket_connect_timeout=2
                )
                _async_clients[cache_key] = client
    return client


async def read_after(
    message_id: object, last_id: str, *, block_ms: int
) -> list[tuple[str, dict[str, Any]]]:
    """Entries after `last_id`, waiting up to `block_ms` for the first one."""
    client = get_async_redis()
    result: Any = await client.xread({stream_key(message_id): last_id}, count=1000, block=block_ms)
    if not result:
        return []
    return [(str(entry_id), dict(fields)) for entry_id, fields in result[0][1]]


async def stream_exists(message_id: object) -> bool:
    return bool(await get_async_redis().exists(stream_key(message_id)))
