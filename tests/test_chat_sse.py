"""The turn stream over real ASGI (uvicorn): served without holding a thread per open stream,
with the site's headers, replay, heartbeats, and a prompt release when the browser goes."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from asgiref.sync import SyncToAsync
from django.urls import reverse

from chat import services, streams
from chat.models import Message
from core import streams as live
from core.redis import get_redis
from tests.chat_helpers import read_stream, send, session_cookie, start_chat
from vault.services import OwnerCipher


def sealed(reply: Message, kind: str, **data: str) -> Any:
    """A stream entry as the worker writes it: sealed with the owner's key."""
    return streams.seal_entry(OwnerCipher(reply.owner), reply.pk, kind, data)


pytestmark = pytest.mark.django_db(transaction=True)


def queued_replies(owner, fake, count: int, settings) -> list[Message]:
    """Turns that stay queued (no worker runs), so their streams stay open and idle."""
    settings.BYOK_MAX_CONCURRENT_TURNS = count + 10
    settings.BYOK_RATE_TURNS_PER_MINUTE = count + 10
    _, key = start_chat(owner, fake)
    replies = []
    for index in range(count):
        conversation = services.conversation_create(owner=owner, key=key, model="gpt-test")
        replies.append(send(conversation, f"question {index}")[1])
    return replies


class RawStream:
    """One SSE connection on a plain socket: open until `close()`, bytes read on demand."""

    def __init__(self, server, user, message: Message, headers: dict[str, str] | None = None):
        url = urlsplit(server.url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=10)
        lines = [
            f"GET /chat/m/{message.pk}/stream/ HTTP/1.1",
            f"Host: {url.netloc}",
            f"Cookie: sessionid={session_cookie(user)['sessionid']}",
            "Accept: text/event-stream",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.data = b""

    def read_until(self, marker: bytes, timeout: float = 20, count: int = 1) -> bytes:
        """Everything read so far, once `marker` is in it `count` times."""
        deadline = time.monotonic() + timeout
        while self.data.count(marker) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.data += chunk
        assert self.data.count(marker) >= count, self.data
        return self.data

    def close(self) -> None:
        self.sock.close()


def subscriptions() -> int:
    # Snapshots: the server's loop adds and removes subscriptions while the test counts.
    hubs = list(live._hubs.values())
    return sum(len(f) for hub in hubs for f in list(hub.subscriptions.values()))


def wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_open_streams_hold_no_thread_of_django_s_request_context(
    alice, fake_provider, asgi_server, settings
):
    replies = queued_replies(alice, fake_provider, 30, settings)
    threads_before = threading.active_count()
    subscribed_before = subscriptions()
    opened = [RawStream(asgi_server, alice, reply) for reply in replies]
    try:
        for stream in opened:
            stream.read_until(b"retry: 2000")
        assert wait_for(lambda: subscriptions() - subscribed_before == len(replies))
        # Django's per-request executors (one thread each) are all gone while 30 stream.
        assert wait_for(lambda: not SyncToAsync.context_to_thread_executor)
        assert wait_for(lambda: threading.active_count() - threads_before <= 3), (
            threading.active_count() - threads_before
        )
    finally:
        for stream in opened:
            stream.close()


def test_the_stream_carries_the_site_headers_and_is_never_compressed(
    alice, fake_provider, asgi_server, settings
):
    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    services.turn_cancel(message=reply)  # final, with a `done` entry in its stream
    url = f"{asgi_server.url}{reverse('chat:stream', args=[reply.pk])}"
    response = httpx.get(
        url, cookies=session_cookie(alice), headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    assert response.status_code == 200
    headers = response.headers
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache, no-transform"
    assert headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in headers and "content-length" not in headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert "x-byok" not in " ".join(headers).lower()  # nothing internal leaks out
    assert response.text.startswith("retry: 2000\n\n")
    assert "event: done" in response.text


def test_a_reconnect_replays_after_last_event_id_then_follows_live(
    alice, fake_provider, asgi_server, settings
):
    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    redis = get_redis()
    key = streams.stream_key(reply.pk)
    ids = [
        str(redis.xadd(key, sealed(reply, "delta", text=word)))
        for word in ("one ", "two ", "three")
    ]
    everything = read_stream(asgi_server, alice, reply, stop_after=3)
    assert [e.data["text"] for e in everything] == ["one ", "two ", "three"]
    assert [e.id for e in everything] == ids

    stream = RawStream(asgi_server, alice, reply, {"Last-Event-ID": ids[0]})
    try:
        data = stream.read_until(b'"text":"three"')
        # Entries after the last one seen (the rendering carries the whole reply).
        assert b'"text":"one "' not in data
        assert data.index(b'"text":"two "') < data.index(b'"text":"three"')
        redis.xadd(key, sealed(reply, "done", status="done", html="<p>x</p>", notice=""))
        assert b"event: done" in stream.read_until(b"0\r\n\r\n")  # then the response ends
    finally:
        stream.close()


def test_a_bad_last_event_id_replays_from_the_start(alice, fake_provider, asgi_server, settings):
    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    get_redis().xadd(streams.stream_key(reply.pk), sealed(reply, "delta", text="first"))
    # Digits Redis would refuse too (above 2**64 - 1; non-ASCII ones: see the next test).
    for bad in ("nonsense", "1-2-3", "9" * 50, "99999999999999999999-0"):
        events = read_stream(asgi_server, alice, reply, last_event_id=bad, stop_after=1)
        assert events[0].data["text"] == "first"


def test_a_last_event_id_past_the_end_of_a_finished_turn_replays_it_to_the_end(
    alice, fake_provider, asgi_server, settings
):
    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    key = streams.stream_key(reply.pk)
    get_redis().xadd(key, sealed(reply, "delta", text="whole"))
    get_redis().xadd(key, sealed(reply, "done", status="done", html="<p>whole</p>", notice=""))
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.DONE)
    stream = RawStream(asgi_server, alice, reply, {"Last-Event-ID": "99999999999999-0"})
    try:
        data = stream.read_until(b"event: done")  # fails after a deadline, not a hang
        assert data.index(b"whole") < data.index(b"event: done")
        assert stream.read_until(b"0\r\n\r\n")  # and the response ends
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("0-0", True),
        ("1732900000000-5", True),
        ("18446744073709551615-18446744073709551615", True),
        ("18446744073709551616-0", False),  # above 2**64 - 1
        ("\u0661-0", False),  # an Arabic-Indic one: str.isdigit() says yes, Redis says no
        ("12", False),
        ("-1", False),
        ("1-", False),
    ],
)
def test_only_stream_ids_redis_accepts_are_followed(value, valid):
    assert live.valid_stream_id(value) is valid


def test_a_bad_cursor_from_one_user_never_silences_another_user_s_stream(
    alice, bob, fake_provider, asgi_server, settings
):
    """The hub reads every followed stream in one XREAD: a cursor Redis rejects would make
    that read fail for every stream of the process."""
    (mine,) = queued_replies(alice, fake_provider, 1, settings)
    (theirs,) = queued_replies(bob, fake_provider, 1, settings)
    attacker = RawStream(asgi_server, alice, mine, {"Last-Event-ID": "99999999999999999999-0"})
    victim = RawStream(asgi_server, bob, theirs)
    try:
        attacker.read_until(b"retry: 2000")
        victim.read_until(b"retry: 2000")
        get_redis().xadd(streams.stream_key(theirs.pk), sealed(theirs, "delta", text="still here"))
        assert b"still here" in victim.read_until(b"still here")
    finally:
        attacker.close()
        victim.close()


def test_an_idle_stream_gets_heartbeats_and_then_the_stored_outcome(
    alice, fake_provider, asgi_server, settings
):
    settings.BYOK_SSE_HEARTBEAT_SECONDS = 0.3
    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    stream = RawStream(asgi_server, alice, reply)
    try:
        stream.read_until(b"retry: 2000")
        stream.read_until(b": keep-alive", count=2)
        # The turn ends and its stream is gone (expired, or Redis lost it): the next
        # heartbeat finds that out and serves the stored outcome.
        Message.objects.filter(pk=reply.pk).update(status=Message.Status.STOPPED)
        data = stream.read_until(b"0\r\n\r\n")
        assert b"id: stored\nevent: done" in data and b'"status":"stopped"' in data
    finally:
        stream.close()


def test_a_quiet_stream_outlives_the_hub_s_blocking_read_without_a_reconnect(
    alice, fake_provider, asgi_server, settings, caplog, monkeypatch
):
    """The hub's XREAD blocks for BLOCK_MS; its connection must wait longer than that. With
    redis-py's default socket timeout (5 s, the same as BLOCK_MS) every quiet 5 s ended in
    a read timeout, a reconnect and half a second in which no stream moved."""
    settings.BYOK_SSE_HEARTBEAT_SECONDS = 60
    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    key = streams.stream_key(reply.pk)
    readers: list[int | None] = []  # the hub's reader connection, at each XREAD for `key`
    real_command = live.StreamHub._xread_command

    def xread_command(hub: live.StreamHub) -> bytes:
        if key in hub.subscriptions:
            readers.append(hub._reader_id)
        return real_command(hub)

    monkeypatch.setattr(live.StreamHub, "_xread_command", xread_command)
    stream = RawStream(asgi_server, alice, reply)
    try:
        stream.read_until(b"retry: 2000")
        # One quiet stream: only its BLOCK_MS ends the first XREAD, then the next one goes.
        quiet = live.StreamHub.BLOCK_MS / 1000
        assert wait_for(lambda: len(readers) >= 2, timeout=quiet + 30), readers
        assert readers[0] == readers[1], "the hub reconnected after a quiet read"
        get_redis().xadd(key, sealed(reply, "delta", text="awake"))
        assert b"awake" in stream.read_until(b"awake")
    finally:
        stream.close()
    assert "Redis read failed" not in caplog.text


def test_a_disconnect_releases_the_subscription_at_once(
    alice, fake_provider, asgi_server, settings
):
    settings.BYOK_SSE_HEARTBEAT_SECONDS = 3600  # only the disconnect itself can end them
    replies = queued_replies(alice, fake_provider, 5, settings)
    before = subscriptions()
    opened = [RawStream(asgi_server, alice, reply) for reply in replies]
    for stream in opened:
        stream.read_until(b"retry: 2000")
    assert wait_for(lambda: subscriptions() - before == 5)
    for stream in opened:
        stream.close()
    assert wait_for(lambda: subscriptions() == before), subscriptions() - before


def test_many_streams_opening_at_once_cost_no_redis_round_trip_each(
    alice, fake_provider, asgi_server, settings
):
    settings.BYOK_SSE_HEARTBEAT_SECONDS = 3600  # no heartbeat (nor its EXISTS) falls due
    replies = queued_replies(alice, fake_provider, 40, settings)
    redis = get_redis()

    def calls(command: str) -> int:
        return int(redis.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))

    before = {c: calls(c) for c in ("xread", "client|unblock", "exists")}
    opened = [RawStream(asgi_server, alice, reply) for reply in replies]
    try:
        for stream in opened:
            stream.read_until(b"retry: 2000")
        spent = {c: calls(c) - n for c, n in before.items()}
        assert spent["exists"] == 0
        # One reader: each XREAD (and the CLIENT UNBLOCK that interrupts it) serves every
        # stream opened meanwhile; at most one of each per stream, whatever the timing.
        assert spent["xread"] <= len(replies) + 1 and spent["client|unblock"] <= spent["xread"]
    finally:
        for stream in opened:
            stream.close()


def test_the_stream_is_the_owner_s_alone(alice, bob, fake_provider, asgi_server, settings):
    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    url = f"{asgi_server.url}{reverse('chat:stream', args=[reply.pk])}"
    as_bob = httpx.get(url, cookies=session_cookie(bob), timeout=20)
    assert as_bob.status_code == 404
    assert "text/event-stream" not in as_bob.headers["content-type"]
    anonymous = httpx.get(url, timeout=20, follow_redirects=False)
    assert anonymous.status_code == 302
    assert anonymous.headers["location"].startswith("/accounts/login/")
    deleted = httpx.delete(url, cookies=session_cookie(alice), timeout=20)
    assert deleted.status_code in (403, 405)
    key = streams.stream_key(reply.pk)
    assert all(key not in hub.subscriptions for hub in live._hubs.values())


def test_a_stream_whose_final_entry_never_came_ends_with_the_stored_outcome(
    alice, fake_provider, asgi_server, settings
):
    """A stream with deltas and no final entry (Redis failed on it, or the worker's store
    answer was lost) must not read "writing" until it expires: a heartbeat asks the
    database."""
    settings.BYOK_SSE_HEARTBEAT_SECONDS = 0.3
    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    get_redis().xadd(streams.stream_key(reply.pk), sealed(reply, "delta", text="half"))
    stream = RawStream(asgi_server, alice, reply)
    try:
        stream.read_until(b"half")
        Message.objects.filter(pk=reply.pk).update(status=Message.Status.STOPPED)
        data = stream.read_until(b"0\r\n\r\n")
        assert b"id: stored\nevent: done" in data and b'"status":"stopped"' in data
    finally:
        stream.close()


def test_a_reply_whose_owner_s_data_key_does_not_open_ends_its_stream_saying_it_failed(
    alice, fake_provider, settings
):
    from chat.sse import stored_events
    from vault.models import DataKey

    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.ERROR)
    DataKey.objects.filter(owner=alice).update(wrapped=b"\x01broken")
    reply.refresh_from_db()
    event = stored_events(reply)
    assert event.startswith("id: stored\nevent: error") and "This reply failed" in event


def shown(events) -> str:
    """The reply's HTML as chat.js builds it from the deltas' `commit` and `tail`."""
    committed, tail = "", ""
    for event in events:
        if "tail" in event.data:
            if event.data.get("reset"):
                committed = ""
            committed += event.data["commit"]
            tail = event.data["tail"]
    return committed + tail


def test_deltas_carry_the_reply_rendered_as_markdown(alice, fake_provider, asgi_server, settings):
    from chat.rendering import render_markdown

    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    redis = get_redis()
    key = streams.stream_key(reply.pk)
    pieces = ["Some **bo", "ld** text\n\n", "| a | b |\n|--:|---|\n", "| 1 | 2 |\n\n- ite", "m"]
    ids = [str(redis.xadd(key, sealed(reply, "delta", text=piece))) for piece in pieces]
    events = read_stream(asgi_server, alice, reply, stop_after=len(pieces))
    assert [e.data["text"] for e in events] == pieces
    assert events[0].data.get("reset") == "1" or events[-1].data.get("reset") == "1"
    assert shown(events) == render_markdown("".join(pieces))
    assert "<strong>bold</strong>" in shown(events) and "**" not in shown(events)

    # A reader that reconnects after the second entry gets a whole rendering first (its
    # `commit` includes what it saw before), then follows.
    again = read_stream(asgi_server, alice, reply, last_event_id=ids[1], stop_after=3)
    assert [e.data["text"] for e in again] == pieces[2:]
    first_rendering = next(e for e in again if "tail" in e.data)
    assert first_rendering.data["reset"] == "1"
    assert "<strong>bold</strong>" in first_rendering.data["commit"]
    assert shown(again) == render_markdown("".join(pieces))


def test_hostile_text_streams_inert(alice, fake_provider, asgi_server, settings):
    from tests.test_chat_markdown import HOSTILE, assert_inert

    (reply,) = queued_replies(alice, fake_provider, 1, settings)
    key = streams.stream_key(reply.pk)
    text = "\n\n".join(HOSTILE)
    pieces = [text[at : at + 9] for at in range(0, len(text), 9)]
    for piece in pieces:
        get_redis().xadd(key, sealed(reply, "delta", text=piece))
    events = read_stream(asgi_server, alice, reply, stop_after=len(pieces))
    for event in events:
        for name in ("commit", "tail"):
            assert_inert(event.data.get(name, ""))
    assert_inert(shown(events))
