"""Live event streams in Redis: the writer a worker appends with, the hub every SSE
reader of a web process shares, and the watcher of stop buttons.

A stream is a Redis stream of `delta` entries ended by one final entry (`done` or `error`);
readers replay it from any entry id (`Last-Event-ID`) and then wait for more. Streams are
bounded and expire. What a stream is called and what its final entry holds is the business
of the surface that writes it (`chat.streams` for a chat turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar, cast

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from core.redis import get_redis
from providers import loop as relay

T = TypeVar("T")
logger = logging.getLogger(__name__)

EVENT_DELTA = "delta"
EVENT_DONE = "done"
EVENT_ERROR = "error"
FINAL_EVENTS = frozenset({EVENT_DONE, EVENT_ERROR})


_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}", re.ASCII)
_MAX_ID_PART = 2**64 - 1


EntryOf = Callable[[str], dict[str, str]]


def plain_delta(text: str) -> dict[str, str]:
    """A delta entry as plain text (a surface with nothing to seal)."""
    return {"type": EVENT_DELTA, "text": text}


def valid_stream_id(value: str) -> bool:
    """A stream entry id Redis accepts: `<ms>-<seq>`, ASCII digits, each part < 2**64."""
    if not _STREAM_ID.fullmatch(value):
        return False
    first, _, second = value.partition("-")
    return int(first) <= _MAX_ID_PART and int(second) <= _MAX_ID_PART


class StreamWriter:
    """Writes the deltas of every turn running in this process, one Redis pipeline per tick,
    on the process's relay loop (`providers.loop`, which also reads every provider stream):
    the loop never waits on Redis, and no thread hands the interpreter lock back and forth
    per token.

    A turn's first delta is written at once (time to first token is what users feel); later
    deltas wait at most `window` seconds and share one round trip with every other running
    turn's. A turn's final event is written by the turn's own thread, with its pending
    deltas first, so entries never land out of order and the end of a turn does not wait
    for the loop's next turn at the interpreter lock.

    Order is kept per stream: a stream has at most one write in flight (`_busy`), and each
    write takes everything pending for it at that moment. So the first delta of a new turn
    never waits behind the tick's pipeline or another turn's write; the tick leaves a busy
    stream's deltas for the next tick. The state is guarded by one lock, held only to move
    texts in and out: `add` may be called from any thread, `finish` from any but the loop.
    """

    MIN_WINDOW = 0.005  # a tick waiting on a stream's write in flight must not spin
    # Beyond a write's own limits (connect 2 s, reply 5 s, no retry): an earlier write of
    # the same stream that never ends.
    FINISH_TIMEOUT = 15.0

    def __init__(self, window: float) -> None:
        self.window = max(window, self.MIN_WINDOW)
        self._pending: dict[str, list[str]] = {}
        # How each stream's batched deltas become an entry (a surface seals them); kept
        # until the stream's final entry is written.
        self._entries: dict[str, EntryOf] = {}
        self._busy: set[str] = set()  # streams with a write in flight
        self._lock = threading.Lock()  # guards _pending and _busy
        self._idle = threading.Condition(self._lock)  # a stream's write has ended
        self._tick_handle: asyncio.TimerHandle | None = None  # the loop's only
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed_keys: set[str] = set()

    def add(self, key: str, text: str, *, now: bool = False, entry: EntryOf | None = None) -> None:
        """Queue `text` for the stream; `now` writes it (with anything pending) at once.
        `entry` makes the fields of one entry from a batch of deltas' text (default: a
        plain `delta` entry)."""
        with self._lock:
            if entry is not None:
                self._entries[key] = entry
            batch: dict[str, list[str]] | None = None
            if now and key not in self._busy:
                batch = {key: [*self._pending.pop(key, []), text]}
                self._busy.add(key)
            else:
                self._pending.setdefault(key, []).append(text)
        if batch is not None:
            self._on_loop(self._spawn_write, batch)
        else:
            self._on_loop(self._ensure_tick)

    def finish(self, key: str, fields: dict[str, str]) -> None:
        """The turn's pending deltas, then its final entry, in one round trip from the
        calling thread; returns once written (or given up on: the database has the outcome
        either way). Not from the relay loop: it blocks."""
        if relay.on_relay_loop():
            raise RuntimeError("StreamWriter.finish blocks; call it from a turn's thread")
        with self._idle:
            if not self._idle.wait_for(lambda: key not in self._busy, self.FINISH_TIMEOUT):
                # Written all the same: a reader stops at the final event (and the database
                # has the text), whereas a stream without one would show "writing" until it
                # expired. A late delta of the stuck write may land after it, unread.
                logger.warning("turn stream %s: an earlier write never ended", key)
            texts = self._pending.pop(key, [])
            entry = self._entries.pop(key, plain_delta)
            self._busy.add(key)
        try:
            batch = {key: texts}
            try:
                pipe = get_redis().pipeline(transaction=False)
                self._commands(pipe, batch, final=fields, entries={key: entry})
                pipe.execute()
            except (redis.RedisError, OSError):
                self._failed(batch)
        finally:
            self._release(batch)
            self.failed_keys.discard(key)  # the stream's last write: forget it either way

    # -- the relay loop -----------------------------------------------------------------------

    @staticmethod
    def _on_loop(callback: Callable[..., None], *args: Any) -> None:
        if relay.on_relay_loop():
            callback(*args)
        else:
            relay.relay_loop().call_soon_threadsafe(callback, *args)

    def _ensure_tick(self) -> None:
        if self._tick_handle is None:
            self._tick_handle = asyncio.get_running_loop().call_later(self.window, self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        with self._lock:
            batch = {k: v for k, v in self._pending.items() if k not in self._busy}
            for key in batch:
                del self._pending[key]
            self._busy.update(batch)
            left = bool(self._pending)  # busy streams' deltas: the next tick's
        if left:
            self._ensure_tick()
        if batch:
            self._spawn_write(batch)

    def _spawn_write(self, batch: dict[str, list[str]]) -> None:
        task = asyncio.get_running_loop().create_task(self._write_and_release(batch))
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    async def _write_and_release(self, batch: dict[str, list[str]]) -> None:
        try:
            await self._write(batch)
        except Exception:  # the writer must outlive any one batch
            logger.exception("turn stream writer: a batch failed")
        finally:
            self._release(batch)

    def _release(self, keys: Iterable[str]) -> None:
        with self._idle:
            self._busy.difference_update(keys)
            self._idle.notify_all()

    async def _write(self, batch: dict[str, list[str]]) -> None:
        try:
            pipe = get_writer_redis().pipeline(transaction=False)
            with self._lock:
                entries = {key: self._entries.get(key, plain_delta) for key in batch}
            self._commands(pipe, batch, entries=entries)
            await pipe.execute()
        except (redis.RedisError, OSError):
            self._failed(batch)

    @staticmethod
    def _commands(
        pipe: Any,
        batch: dict[str, list[str]],
        *,
        entries: dict[str, EntryOf],
        final: dict[str, str] | None = None,
    ) -> None:
        maxlen = settings.BYOK_TURN_STREAM_MAXLEN
        for key, texts in batch.items():
            if texts:
                fields = entries[key]("".join(texts))
                pipe.xadd(key, fields, maxlen=maxlen, approximate=True)
            if final is not None:
                pipe.xadd(key, final, maxlen=maxlen, approximate=True)
            pipe.expire(key, settings.BYOK_TURN_STREAM_TTL)  # a stream always expires

    def _failed(self, batch: dict[str, list[str]]) -> None:
        fresh = set(batch) - self.failed_keys
        if fresh:
            logger.warning(
                "turn streams %s: Redis write failed; the replies are kept in the database",
                ", ".join(sorted(fresh)),
            )
            self.failed_keys.update(fresh)


_writer_clients: dict[tuple[str, int], aioredis.Redis] = {}
WRITER_CONNECTIONS = 16


def get_writer_redis() -> aioredis.Redis:
    """The relay loop's Redis client (the stream writer's). Bounded, and no retries: while
    Redis is down each write fails once, fast, instead of every tick and first delta opening
    connections and backing off (the replies are in the database either way)."""
    return _loop_client(
        _writer_clients,
        max_connections=WRITER_CONNECTIONS,
        timeout=5,
        socket_timeout=5,
        health_check_interval=30,
        retry=AsyncRetry(NoBackoff(), 0),
    )


_per_process: dict[tuple[int, type], Any] = {}
_per_process_lock = threading.Lock()


def _one_per_process(kind: type[T], make: Callable[[], T]) -> T:
    """The process's only `kind` (its threads share it; a forked child makes its own)."""
    key = (os.getpid(), kind)
    found = _per_process.get(key)
    if found is None:
        with _per_process_lock:
            found = _per_process.get(key)
            if found is None:
                found = _per_process[key] = make()
    return cast(T, found)


def get_writer() -> StreamWriter:
    return _one_per_process(StreamWriter, lambda: StreamWriter(settings.BYOK_STREAM_BATCH_SECONDS))


class CancelWatcher:
    """One thread per process asks Redis, for every call running here, whether its user
    pressed stop (a flag key set in Redis): one MGET per poll, whatever the number of calls.

    The same thread renews the leases of the calls this process holds (`hold`): every
    `lease_seconds / 3`, one pipeline of SET ... EX for all of them. A lease that is not
    renewed (the process died, or lost Redis for longer than a lease) expires, and the
    reaper ends its call (see `chat.services.turns_reap`).
    """

    def __init__(self, interval: float, lease_seconds: float = 10.0) -> None:
        self.interval = interval
        self.lease_seconds = max(1, round(lease_seconds))
        self._watched: dict[str, Callable[[], None]] = {}
        self._leases: set[str] = set()
        # Who holds them: this process, for an operator (and the reliability benchmark).
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._next_renewal = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, key: str, on_cancel: Callable[[], None]) -> None:
        """Call `on_cancel` (from the watcher's thread) once the flag `key` is set."""
        with self._lock:
            self._watched[key] = on_cancel
            self._ensure_thread()

    def unwatch(self, key: str) -> None:
        with self._lock:
            self._watched.pop(key, None)

    def hold(self, lease_key: str) -> None:
        """Take the lease `lease_key` now and renew it until `drop` (with Redis away, from
        when it is back)."""
        with self._lock:
            self._leases.add(lease_key)
            self._ensure_thread()
        try:
            get_redis().set(lease_key, self.holder, ex=self.lease_seconds)
        except (redis.RedisError, OSError):
            logger.warning("lease %s: Redis is unreachable; renewing it when it is back", lease_key)

    def drop(self, lease_key: str) -> None:
        """Stop renewing the lease and give it up."""
        with self._lock:
            self._leases.discard(lease_key)
        with contextlib.suppress(redis.RedisError, OSError):
            get_redis().delete(lease_key)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._loop, name="turn-cancel-watcher", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self._renew_leases()
                self._poll()
            except redis.RedisError:
                continue  # Redis is down: nobody can press stop meanwhile
            except Exception:  # the watcher must outlive any one poll
                logger.exception("turn cancel watcher: a poll failed")

    def _renew_leases(self) -> None:
        now = time.monotonic()
        if now < self._next_renewal:
            return
        with self._lock:
            leases = list(self._leases)
        if not leases:
            return
        pipe = get_redis().pipeline(transaction=False)
        for lease_key in leases:
            pipe.set(lease_key, self.holder, ex=self.lease_seconds)
        pipe.execute()
        self._next_renewal = now + self.lease_seconds / 3

    def _poll(self) -> None:
        with self._lock:
            watched = list(self._watched.items())
        if not watched:
            return
        flags = get_redis().mget([key for key, _ in watched])
        for (key, on_cancel), flag in zip(watched, flags, strict=True):
            if flag:
                with self._lock:
                    self._watched.pop(key, None)
                on_cancel()


def get_cancel_watcher() -> CancelWatcher:
    return _one_per_process(
        CancelWatcher,
        lambda: CancelWatcher(settings.BYOK_CANCEL_POLL_SECONDS, settings.BYOK_TURN_LEASE_SECONDS),
    )


# --- async side (the SSE view) -------------------------------------------------------------

_async_clients: dict[tuple[str, int], aioredis.Redis] = {}
_async_lock = threading.Lock()

Entry = tuple[str, dict[str, str]]


def get_async_redis() -> aioredis.Redis:
    """One asyncio Redis client (and pool) per process, URL and event loop: many open
    streams share a few connections (plus the hub's one)."""
    return _loop_client(
        _async_clients, max_connections=settings.BYOK_WEB_REDIS_CONNECTIONS, timeout=10
    )


def _loop_client(
    clients: dict[tuple[str, int], aioredis.Redis],
    *,
    max_connections: int,
    timeout: float,
    **options: Any,
) -> aioredis.Redis:
    """The running loop's client in `clients`, on a bounded pool, created on first use."""
    cache_key = (settings.REDIS_URL, id(asyncio.get_running_loop()))
    client = clients.get(cache_key)
    if client is None:
        with _async_lock:
            client = clients.get(cache_key)
            if client is None:
                pool = aioredis.BlockingConnectionPool.from_url(
                    settings.REDIS_URL,
                    decode_responses=True,
                    socket_connect_timeout=2,
                    max_connections=max_connections,
                    timeout=timeout,
                    **options,
                )
                client = clients[cache_key] = aioredis.Redis(connection_pool=pool)
    return client


async def stream_exists(key: str) -> bool:
    return bool(await get_async_redis().exists(key))


async def resume_from(key: str, last_id: str) -> str:
    """Where a reader that has seen `last_id` resumes: after `last_id`, or from the start
    ("0-0") for an id the stream never had: malformed, or past its last entry (the stream
    is gone, or a forged `Last-Event-ID` that would wait for entries that never come). With
    Redis away, `last_id` as given: the read fails and retries anyway."""
    if last_id == "0-0" or not valid_stream_id(last_id):
        return "0-0"
    try:
        newest = await get_async_redis().xrevrange(key, count=1)
    except redis.RedisError:
        return last_id
    if newest and _id_tuple(last_id) <= _id_tuple(str(newest[0][0])):
        return last_id
    return "0-0"


def _id_tuple(entry_id: str) -> tuple[int, int]:
    first, _, second = entry_id.partition("-")
    return int(first), int(second or 0)


def _bulk(value: str) -> bytes:
    data = value.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task of the hub's own, in a fresh context: it must not inherit (and outlive) the
    context of the request that happened to start it, such as Django's ThreadSensitiveContext.
    """
    return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())


class Subscription:
    """One SSE client following one turn stream through the hub.

    No queue and no timer of its own (thousands are open at once): the hub appends entries
    to `entries`, sets `heartbeat_due` once per heartbeat period, and wakes the one waiter.
    """

    __slots__ = (
        "_waiter",
        "closed",
        "entries",
        "heartbeat_due",
        "key",
        "last_id",
    )

    def __init__(self, key: str, last_id: str) -> None:
        self.key = key
        self.last_id = last_id
        self.entries: list[Entry] = []
        self.heartbeat_due = False
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Ends `next_batch` at once (the client went away)."""
        self.closed = True
        self.wake()

    async def next_batch(self) -> list[Entry] | None:
        """The entries delivered since the last call, waiting for some.

        `[]`: a heartbeat period passed with nothing new (the reader then asks the database
        whether the turn ended: its stream may be gone, or never get its final entry). None:
        closed.
        Entries' field dicts are shared with other subscribers: do not change them.
        """
        while not (self.entries or self.heartbeat_due or self.closed):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.closed:
            return None
        self.heartbeat_due = False
        batch, self.entries = self.entries, []
        return batch


class StreamHub:
    """One blocking reader per web process serves every open SSE stream.

    A blocking XREAD per stream would hold one Redis connection per open browser tab; here
    one connection blocks on all followed streams at once, each from its subscribers' last
    id, and fans entries out — so a new subscriber's replay arrives the same way as live
    entries, and opening a stream costs no Redis round trip of its own. New subscriptions
    wake the reader with one CLIENT UNBLOCK, however many arrive together. One ticker task
    gives every subscription its heartbeat, and asks Redis in one pipeline per tick which of
    the streams due have vanished.
    """

    BLOCK_MS = 5000
    READ_MARGIN = 10.0  # seconds a blocked XREAD's answer may take beyond BLOCK_MS
    COUNT = 1000

    def __init__(self, url: str) -> None:
        self.url = url
        self.subscriptions: dict[str, set[Subscription]] = {}
        self._due: list[tuple[float, int, Subscription]] = []  # a heap of heartbeat times
        self._seq = itertools.count()
        self._reader: aioredis.Redis | None = None
        self._reader_id: int | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._blocked = False  # an XREAD is in flight...
        self._stale = False  # ...and it lacks a subscription made since it was sent
        self._names: dict[str, bytes] = {}  # each followed stream's name, RESP-encoded
        self._xread_head = b"".join(
            _bulk(word) for word in ("XREAD", "COUNT", str(self.COUNT), "BLOCK", str(self.BLOCK_MS))
        ) + _bulk("STREAMS")

    def subscribe(self, key: str, last_id: str) -> Subscription:
        # One XREAD serves every stream: a cursor Redis rejects would silence them all.
        subscription = Subscription(key, last_id if valid_stream_id(last_id) else "0-0")
        self.subscriptions.setdefault(key, set()).add(subscription)
        heartbeat = settings.BYOK_SSE_HEARTBEAT_SECONDS
        heapq.heappush(self._due, (time.monotonic() + heartbeat, next(self._seq), subscription))
        self._stale = True
        self._wake.set()
        self._start("reader", self._read)
        self._start("ticker", self._tick)
        if self._blocked:
            self._start("unblock", self._unblock)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.close()
        followers = self.subscriptions.get(subscription.key)
        if followers is not None:
            followers.discard(subscription)
            if not followers:
                del self.subscriptions[subscription.key]
                self._names.pop(subscription.key, None)

    def _start(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = self._tasks.get(name)
        if task is None or task.done():
            self._tasks[name] = _spawn(loop())

    async def _unblock(self) -> None:
        """Interrupt the reader's XREAD so that its next one includes the new subscriptions.
        Retried briefly: the XREAD may still be on its way to Redis (CLIENT UNBLOCK then
        answers 0)."""
        for _ in range(50):
            if not (self._blocked and self._stale) or self._reader_id is None:
                return
            try:
                if await get_async_redis().client_unblock(self._reader_id):
                    return
            except redis.RedisError:
                logger.debug("stream hub: unblock failed", exc_info=True)
                return  # the XREAD times out within BLOCK_MS anyway
            await asyncio.sleep(0.002)

    async def _connect(self) -> Any:
        if self._reader is None:
            self._reader = aioredis.Redis.from_url(
                self.url,
                decode_responses=True,
                single_connection_client=True,
                socket_connect_timeout=2,
                # Longer than the XREAD's own BLOCK: redis-py's default (5 s) equals it, so
                # every quiet 5 s ended in a read timeout, a reconnect and a half-second pause.
                socket_timeout=self.BLOCK_MS / 1000 + self.READ_MARGIN,
            )
            self._reader_id = int(await self._reader.client_id())
        return self._reader.connection

    def _xread_command(self) -> bytes:
        """XREAD BLOCK over every followed stream, each from its subscribers' lowest id.

        Packed here rather than by redis-py, whose generic packer takes ~10 ms for 5,000
        streams, on every new subscription and every new entry: the stream names' encoding
        is kept, only the ids are encoded each time.
        """
        names: list[bytes] = []
        ids: list[bytes] = []
        for key, followers in self.subscriptions.items():
            if len(followers) == 1:
                cursor = next(iter(followers)).last_id
            else:
                cursor = min((s.last_id for s in followers), key=_id_tuple)
            name = self._names.get(key)
            if name is None:
                name = self._names[key] = _bulk(key)
            names.append(name)
            ids.append(_bulk(cursor))
        head = b"*%d\r\n" % (6 + 2 * len(names)) + self._xread_head
        return b"".join([head, *names, *ids])

    async def _read(self) -> None:
        while True:
            if not self.subscriptions:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=60)
                except TimeoutError:
                    if not self.subscriptions:
                        await self._reset()
                        return  # idle: the next subscription starts a new reader
                continue
            try:
                connection = await self._connect()
                # No await between reading the cursors and marking the XREAD in flight: a
                # subscription made after this point sees `_blocked` and unblocks it.
                self._wake.clear()
                self._stale = False
                command = self._xread_command()
                self._blocked = True
                await connection.send_packed_command(command, check_health=False)
                result: Any = await connection.read_response()
            except (redis.RedisError, OSError):
                logger.warning("stream hub: Redis read failed; retrying", exc_info=True)
                await self._reset()
                await asyncio.sleep(0.5)
                continue
            finally:
                self._blocked = False
            # RESP3 (redis-py 8) answers a map of streams, RESP2 a list of pairs.
            try:
                for key, raw in result.items() if isinstance(result, dict) else result or ():
                    self._deliver(key, raw)
            except Exception:  # a reader that died would leave every stream silent
                logger.exception("stream hub: unexpected XREAD answer")

    def _deliver(self, key: str, raw_entries: list[list[Any]]) -> None:
        followers = self.subscriptions.get(key)
        if not followers or not raw_entries:
            return
        entries = [
            (entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))
            for entry_id, fields in raw_entries
        ]
        last = _id_tuple(entries[-1][0])
        for subscription in followers:
            after = _id_tuple(subscription.last_id)
            if last <= after:
                continue
            fresh = [entry for entry in entries if _id_tuple(entry[0]) > after]
            subscription.entries.extend(fresh)
            subscription.last_id = fresh[-1][0]
            subscription.wake()

    async def _tick(self) -> None:
        while self._due:
            heartbeat = settings.BYOK_SSE_HEARTBEAT_SECONDS
            await asyncio.sleep(min(1.0, max(0.02, heartbeat / 4)))
            now = time.monotonic()
            due: list[Subscription] = []
            while self._due and self._due[0][0] <= now:
                subscription = heapq.heappop(self._due)[2]
                if not subscription.closed:
                    due.append(subscription)
            if not due:
                continue
            for subscription in due:
                if subscription.closed:
                    continue
                subscription.heartbeat_due = True
                subscription.wake()
                heapq.heappush(self._due, (now + heartbeat, next(self._seq), subscription))

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
