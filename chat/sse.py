"""Server-sent events of a turn, without a thread per open stream.

Django's ASGI handler runs each request in a ThreadSensitiveContext, and the first sync
middleware gives that context an executor thread of its own, which lives until the response
has been sent: for a streaming response, one thread (and its database connection) per open
stream. An `EventStreamResponse` is handed back by `byok_site.asgi` once the view and every
middleware have run and that context has closed; its body is then streamed here in plain
asyncio, from the process's `StreamHub`, with no thread, timer or Redis connection of its
own. Under any other server it is an ordinary streaming response.

Wire format (static/js/chat.js): `retry: 2000` first, then `id:`/`event:`/`data:` events
(`delta`, then one `done` or `error`), and `: keep-alive` comments while nothing happens. A
`delta` carries its `text` and, rendered as it grows (`chat.rendering.LiveMarkdown`, the
same sanitising as the final HTML), `commit` (HTML of blocks now complete, appended once)
and `tail` (the last block's HTML, replacing the previous tail); `reset` says `commit` is
everything so far (the first rendering of each connection: a reload or reconnect).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.http import StreamingHttpResponse

from chat import selectors, streams
from chat.branches import join_boundary
from chat.models import Message
from chat.rendering import LiveMarkdown
from core import streams as live
from vault.services import OwnerCipher, VaultError

logger = logging.getLogger(__name__)

RETRY = "retry: 2000\n\n"
KEEP_ALIVE = ": keep-alive\n\n"
UNKNOWN = ""  # a status lookup that failed: carry on as if the turn were still running

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    lines = []
    if event_id:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def stored_events(message: Message) -> str:
    """A finished turn whose stream has expired: its stored outcome as the final event. One
    whose owner's data key does not open says it failed (nothing of it can be shown)."""
    try:
        cipher = OwnerCipher(message.owner)
    except VaultError:
        logger.warning("SSE: the data key of the owner of %s does not open", message.pk)
        return sse(
            "error", {"message": selectors.UNSEALED_ERROR, "action": "", "html": ""}, "stored"
        )
    view = selectors.reply_view(message, cipher)  # a continued reply: every part, joined
    if message.status == Message.Status.ERROR:
        event, data = "error", {"message": view.error, "action": "", "link": view.error_link}
    else:
        event, data = "done", {"status": message.status, "notice": message.notice}
    continuable = "1" if view.continuable else ""
    return sse(
        event, {**data, "html": view.html, **view.facts, "continuable": continuable}, "stored"
    )


def _stored_events_of(message_id: Any) -> str:
    try:
        message = (
            Message.objects.select_related("owner", "provider_key", "conversation")
            .filter(pk=message_id)
            .first()
        )
        return stored_events(message) if message is not None else ""
    finally:
        close_old_connections()  # this thread serves no request that would close it


def _statuses_of(message_ids: list[str]) -> dict[str, str]:
    # SECURITY: unscoped on purpose: each id was checked against its owner when the stream
    # was opened, and only the status goes back, to that stream.
    try:
        found: dict[str, str] = {}
        for start in range(0, len(message_ids), 500):
            rows = Message.objects.filter(pk__in=message_ids[start : start + 500])
            found.update((str(pk), status) for pk, status in rows.values_list("pk", "status"))
        return found
    finally:
        close_old_connections()


class StatusLookups:
    """The statuses of turns whose streams have vanished, for many streams at once.

    Every quiet stream asks the database at each heartbeat whether its turn has ended:
    here one query answers every stream that asks in the same moment, not one query (and
    one thread hop) per stream.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, list[asyncio.Future[str | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def status(self, message_id: object) -> str | None:
        """The turn's status, None when it is gone, UNKNOWN when the database failed."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(str(message_id), []).append(future)
        if self._task is None or self._task.done():
            # A fresh context: not the (closed) request context of whichever stream asked.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), context=contextvars.Context()
            )
        return await future

    async def _run(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # let every stream woken in this tick ask first
            batch, self._waiting = self._waiting, {}
            try:
                found: dict[str, str] | None = await sync_to_async(_statuses_of)(list(batch))
            except Exception:
                logger.warning("SSE: turn status lookup failed", exc_info=True)
                found = None
            for message_id, futures in batch.items():
                result = UNKNOWN if found is None else found.get(message_id)
                for future in futures:
                    if not future.done():
                        future.set_result(result)


_lookups: dict[int, StatusLookups] = {}


def get_status_lookups() -> StatusLookups:
    loop_id = id(asyncio.get_running_loop())
    lookups = _lookups.get(loop_id)
    if lookups is None:
        lookups = _lookups[loop_id] = StatusLookups()
    return lookups


class TurnEvents:
    """The events of one turn after `last_id`: replay, then live, until `done` or `error`."""

    __slots__ = (
        "cipher",
        "closed",
        "final",
        "held",
        "last_id",
        "markdown",
        "message_id",
        "subscription",
        "synced",
    )

    def __init__(
        self,
        message_id: Any,
        last_id: str,
        *,
        final: bool,
        cipher: OwnerCipher | None,
        prefix: str = "",
    ) -> None:
        self.message_id = message_id
        self.cipher = cipher  # the owner's: the stream's entries are sealed with it
        self.last_id = last_id
        self.final = final
        self.subscription: live.Subscription | None = None
        self.closed = False
        # The reply's Markdown so far, rendered as it grows (`LiveMarkdown`); `synced`
        # turns true once this connection has sent the page a whole rendering.
        self.markdown = LiveMarkdown()
        # A continuation renders as part of the reply it continues: that text comes first
        # (`selectors.continued_prefix`), so the page shows one reply growing; its trailing
        # whitespace waits for the continuation's first text (`branches.join_boundary`).
        self.markdown.add(prefix.rstrip())
        self.held = prefix[len(prefix.rstrip()) :]
        self.synced = False

    def close(self) -> None:
        self.closed = True
        if self.subscription is not None:
            self.subscription.close()

    async def events(self) -> AsyncGenerator[str]:
        yield RETRY
        if self.last_id != "0-0":  # a reconnect: one round trip to check its id
            self.last_id = await live.resume_from(streams.stream_key(self.message_id), self.last_id)
            if self.last_id != "0-0":
                await self._catch_up()
        if self.last_id == "0-0" and self.final and not await self._stream_exists():
            yield await _stored(self.message_id)
            return
        if self.closed:
            return
        hub = live.get_hub()
        subscription = hub.subscribe(streams.stream_key(self.message_id), self.last_id)
        self.subscription = subscription
        try:
            while True:
                due = self.markdown.due_in()
                try:
                    entries = await asyncio.wait_for(subscription.next_batch(), due)
                except TimeoutError:  # the tail's rendering was put off and is due now
                    yield self._rendered(self.last_id)
                    continue
                if entries is None:
                    return
                if not entries:  # a heartbeat period with nothing new
                    # Ask the database whether the turn ended: its stream may be gone (expired,
                    # not started) or never get its final entry (lost in a Redis failure, or
                    # a store whose answer was lost). One batched query per heartbeat for all
                    # the process's quiet streams.
                    status = await get_status_lookups().status(self.message_id)
                    if status is None:
                        return  # the conversation was deleted
                    if status in Message.FINAL:
                        yield await _stored(self.message_id)
                        return
                    yield KEEP_ALIVE
                    continue
                chunk: list[str] = []
                deltas: list[tuple[str, str]] = []
                final = False
                for entry_id, fields in entries:
                    kind = fields.get("type", live.EVENT_DELTA)
                    data = streams.open_entry(self.cipher, self.message_id, fields)
                    if kind in live.FINAL_EVENTS:
                        final = True
                        self._flush(deltas, chunk, render=False)  # the final HTML follows
                        if data is None:  # not sealed for this reply by its owner's key
                            chunk.append(await _stored(self.message_id))
                        else:
                            chunk.append(sse(kind, data, entry_id))
                        break
                    if data is not None:
                        deltas.append((entry_id, data.get("text", "")))
                        self.last_id = entry_id
                self._flush(deltas, chunk)
                if chunk:
                    yield "".join(chunk)
                if final:
                    return
        finally:
            hub.unsubscribe(subscription)

    def _flush(
        self, deltas: list[tuple[str, str]], chunk: list[str], *, render: bool = True
    ) -> None:
        """The events of a batch's deltas, one per entry (its id is where a reconnect
        resumes); the batch's rendering rides on its last."""
        for index, (entry_id, text) in enumerate(deltas):
            if index < len(deltas) - 1 or not render:
                self.markdown.add(self._joined(text))
                chunk.append(sse(live.EVENT_DELTA, {"text": text}, entry_id))
            else:
                chunk.append(self._delta(text, entry_id))
        deltas.clear()

    def _delta(self, text: str, entry_id: str) -> str:
        """The `delta` event of the last entry of a batch: its text, and the reply's
        Markdown rendered when due (`LiveMarkdown.feed`): `commit`,
        the HTML of blocks that are complete now (appended once), and `tail`, the last
        block's (replacing the one before)."""
        if not self.synced:
            self.markdown.add(self._joined(text))
            return self._rendered(entry_id, text)
        data = {"text": text}
        rendered = self.markdown.feed(self._joined(text))
        if rendered is not None:
            data["commit"], data["tail"] = rendered
        return sse(live.EVENT_DELTA, data, entry_id)

    def _joined(self, text: str) -> str:
        """A delta's text as it joins the reply: the first one of a continuation takes the
        held whitespace of the reply it continues, unless it brings its own."""
        if self.held and text:
            text, self.held = join_boundary(self.held, text), ""
        return text

    def _rendered(self, entry_id: str, text: str = "") -> str:
        """A `delta` event with the whole reply so far rendered, marked `reset` (the page
        replaces what it shows): the first of each connection, and a rendering that was put
        off and is due."""
        committed, tail = self.markdown.snapshot()
        self.synced = True
        data = {"text": text, "commit": committed, "tail": tail, "reset": "1"}
        return sse(live.EVENT_DELTA, data, entry_id)

    async def _catch_up(self) -> None:
        """The text a reconnecting reader has seen (up to `last_id`), for the rendering."""
        try:
            seen: list[tuple[str, dict[str, str]]] = await live.get_async_redis().xrange(  # type: ignore[assignment]
                streams.stream_key(self.message_id), "-", self.last_id
            )
        except redis.RedisError:
            return  # then it renders what this connection sees
        for _entry_id, fields in seen:
            if fields.get("type") == live.EVENT_DELTA:
                data = streams.open_entry(self.cipher, self.message_id, fields)
                if data is not None:
                    self.markdown.add(self._joined(data.get("text", "")))
        self.markdown.stale = False  # the page shows that much; its next delta renders it

    async def _stream_exists(self) -> bool:
        try:
            return await live.stream_exists(streams.stream_key(self.message_id))
        except redis.RedisError:
            return False  # the turn is final: its stored outcome is the whole truth

    async def serve(self, send: Send, receive: Receive) -> None:
        """Stream the body over ASGI (the response start is sent already), ending at once
        when the client disconnects."""
        watcher = asyncio.get_running_loop().create_task(self._watch(receive))
        events = self.events()
        try:
            async for chunk in events:
                message = {"type": "http.response.body", "body": chunk.encode(), "more_body": True}
                await send(message)
        except Exception:
            logger.exception("SSE stream of %s failed; the browser will reconnect", self.message_id)
        finally:
            await events.aclose()
            watcher.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.close()


async def _stored(message_id: Any) -> str:
    return await sync_to_async(_stored_events_of)(message_id)


class EventStreamResponse(StreamingHttpResponse):
    """A turn's server-sent events. `byok_site.asgi` serves it detached from Django's request
    context (`detach()`); any other handler streams it like a StreamingHttpResponse."""

    def __init__(
        self,
        message_id: object,
        last_id: str,
        *,
        final: bool,
        cipher: OwnerCipher | None,
        prefix: str = "",
    ) -> None:
        self.turn_events = TurnEvents(
            message_id, last_id, final=final, cipher=cipher, prefix=prefix
        )
        super().__init__(self.turn_events.events(), content_type="text/event-stream")
        self["Cache-Control"] = "no-cache, no-transform"
        self["X-Accel-Buffering"] = "no"

    def detach(self) -> TurnEvents:
        """The body, to be served once Django is done with the request."""
        return self.turn_events
