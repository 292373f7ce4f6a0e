"""Live turn streams in Redis: one stream per assistant message, `byok:turn:<message id>`.

The worker appends `delta` entries and ends with one `done` or `error` entry; the SSE view
replays from any entry id (`Last-Event-ID`) and then waits for more. Streams are bounded and
expire, so Redis never holds a conversation for long; the database has the final text.
"""

from __future__ import annotations

import asyncio
import contextlib
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
                # Bounded: many open streams share a few connections (plus the hub's one).
                pool = aioredis.BlockingConnectionPool.from_url(
                    settings.REDIS_URL,
                    decode_responses=True,
                    socket_connect_timeout=2,
                    max_connections=settings.BYOK_WEB_REDIS_CONNECTIONS,
                    timeout=10,
                )
                client = aioredis.Redis(connection_pool=pool)
                _async_clients[cache_key] = client
    return client


async def read_after(message_id: object, last_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Entries after `last_id`, without waiting (the hub does the waiting)."""
    client = get_async_redis()
    result: Any = await client.xread({stream_key(message_id): last_id}, count=1000)
    if not result:
        return []
    return [(str(entry_id), dict(fields)) for entry_id, fields in result[0][1]]


async def stream_exists(message_id: object) -> bool:
    return bool(await get_async_redis().exists(stream_key(message_id)))


def _id_tuple(entry_id: str) -> tuple[int, int]:
    first, _, second = entry_id.partition("-")
    return int(first), int(second or 0)


class Subscription:
    """One SSE client following one turn stream through the hub."""

    def __init__(self, key: str, last_id: str) -> None:
        self.key = key
        self.last_id = last_id
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def next_batch(self, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """Entries delivered since the last call, waiting up to `timeout` for the first."""
        try:
            first = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return []
        batch = [first]
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch


class StreamHub:
    """One blocking reader per web process serves every open SSE stream.

    A blocking XREAD per stream would hold one Redis connection per open browser tab; here
    one connection blocks on all followed streams at once and fans entries out to the
    subscribers. A new subscription wakes the reader with CLIENT UNBLOCK, so it adds no
    latency to the first token.
    """

    BLOCK_MS = 5000

    def __init__(self, url: str) -> None:
        self.url = url
        self.subscriptions: dict[str, set[Subscription]] = {}
        self._reader: aioredis.Redis | None = None
        self._reader_id: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._blocked = False

    async def subscribe(self, key: str, last_id: str) -> Subscription:
        subscription = Subscription(key, last_id)
        self.subscriptions.setdefault(key, set()).add(subscription)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        await self._interrupt()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        followers = self.subscriptions.get(subscription.key)
        if followers is not None:
            followers.discard(subscription)
            if not followers:
                del self.subscriptions[subscription.key]

    async def _interrupt(self) -> None:
        self._wake.set()
        if self._blocked and self._reader_id is not None:
            try:
                await get_async_redis().client_unblock(self._reader_id)
            except redis.RedisError:
                logger.debug("stream hub: unblock failed", exc_info=True)

    async def _connect(self) -> aioredis.Redis:
        if self._reader is None:
            self._reader = aioredis.Redis.from_url(
                self.url, decode_responses=True, single_connection_client=True
            )
            self._reader_id = int(await self._reader.client_id())
        return self._reader

    async def _run(self) -> None:
        while True:
            if not self.subscriptions:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=60)
                except TimeoutError:
                    if not self.subscriptions:
                        return  # idle: the next subscription starts a new reader
                continue
            self._wake.clear()
            cursors: dict[Any, Any] = {
                key: min((s.last_id for s in followers), key=_id_tuple)
                for key, followers in self.subscriptions.items()
            }
            try:
                reader = await self._connect()
                self._blocked = True
                result: Any = await reader.xread(cursors, count=1000, block=self.BLOCK_MS)
            except (redis.RedisError, OSError):
                logger.warning("stream hub: Redis read failed; retrying", exc_info=True)
                await self._reset()
                await asyncio.sleep(0.5)
                continue
            finally:
                self._blocked = False
            for key, entries in result or []:
                for subscription in list(self.subscriptions.get(key, ())):
                    for entry_id, fields in entries:
                        if _id_tuple(entry_id) > _id_tuple(subscription.last_id):
                            subscription.queue.put_nowait((entry_id, dict(fields)))
                            subscription.last_id = entry_id

    async def _reset(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader.aclose()
        self._reader = None
        self._reader_id = None


_hubs: dict[tuple[str, int], StreamHub] = {}


def get_hub() -> StreamHub:
    """The stream hub of this process and event loop."""
    loop = asyncio.get_running_loop()
    cache_key = (settings.REDIS_URL, id(loop))
    hub = _hubs.get(cache_key)
    if hub is None:
        hub = _hubs[cache_key] = StreamHub(settings.REDIS_URL)
    return hub
