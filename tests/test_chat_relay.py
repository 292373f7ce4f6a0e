"""The worker side of the relay: one stream writer and one cancel watcher per process.

Many turns running in one worker process must not each make their own Redis round trips:
the writer sends every turn's pending deltas in one pipeline per tick, and the watcher asks
about every running turn's stop button with one MGET per poll.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio

from chat import streams
from core import streams as live
from core.redis import get_redis
from providers import aio
from providers import loop as relay


class CountingRedis:
    """The real client, counting commands sent by name."""

    def __init__(self) -> None:
        self.real = get_redis()
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def __getattr__(self, name):
        attribute = getattr(self.real, name)
        if not callable(attribute):
            return attribute

        def counted(*args, **kwargs):
            self._count(name)
            return attribute(*args, **kwargs)

        return counted


@pytest.fixture
def counting_redis(monkeypatch):
    counter = CountingRedis()
    monkeypatch.setattr(live, "get_redis", lambda: counter)
    return counter


def entries(key: str) -> list[dict[str, str]]:
    found: Any = get_redis().xrange(key)
    return [dict(fields) for _, fields in found]


def counted_writes(writer: live.StreamWriter, monkeypatch) -> list[list[str]]:
    """The keys of each pipeline the writer sends (one `_write` is one round trip)."""
    writes: list[list[str]] = []
    real_write = writer._write

    async def write(batch):
        writes.append(list(batch))
        await real_write(batch)

    monkeypatch.setattr(writer, "_write", write)
    return writes


def test_many_turns_share_one_pipeline_per_tick_and_keep_their_order(monkeypatch):
    writer = live.StreamWriter(window=0.05)
    writes = counted_writes(writer, monkeypatch)
    turns = [f"byok:turn:{uuid.uuid4()}" for _ in range(8)]
    tokens = 30

    async def run(key: str) -> None:  # on the relay loop, as a provider stream's reader is
        writer.add(key, "t0 ", now=True)  # the first token goes out at once
        for index in range(1, tokens):
            writer.add(key, f"t{index} ")
            await asyncio.sleep(0.01)  # 100 tokens/s

    started = time.monotonic()
    readers = [relay.submit(run(key)) for key in turns]
    for reader in readers:
        reader.result(timeout=10)
    for key in turns:  # from the turns' own threads, as a turn ends
        writer.finish(key, {"type": "done", "status": "done", "html": "", "notice": ""})
    elapsed = time.monotonic() - started

    expected = "".join(f"t{index} " for index in range(tokens))
    for key in turns:
        stream = entries(key)
        assert stream[-1]["type"] == "done"
        assert all(fields["type"] == "delta" for fields in stream[:-1])
        assert "".join(fields["text"] for fields in stream[:-1]) == expected
        assert len(stream) < tokens / 2, "deltas within one tick share one entry"
        assert get_redis().ttl(key) > 0
    # One first write per turn (the final ones are the turns' own), plus one pipeline per
    # tick for all of them; a writer per turn would need about (elapsed / window) per turn.
    ticks = elapsed / writer.window + 2
    assert len(writes) <= len(turns) + ticks, len(writes)
    assert len(writes) < len(turns) * ticks / 2
    assert any(len(keys) > 1 for keys in writes), "a tick carries several turns' deltas"


def test_a_final_event_carries_the_deltas_still_waiting_for_a_tick():
    writer = live.StreamWriter(window=5.0)  # no tick will come in time
    key = f"byok:turn:{uuid.uuid4()}"
    writer.add(key, "first ", now=True)  # from another thread: handed to the loop in order
    writer.add(key, "second ")
    writer.add(key, "third")
    writer.finish(key, {"type": "error", "message": "cut off", "action": "", "html": ""})
    assert [(f["type"], f.get("text")) for f in entries(key)] == [
        ("delta", "first "),
        ("delta", "second third"),
        ("error", None),
    ]


def test_a_slow_write_holds_back_only_its_own_stream(monkeypatch):
    """A new turn's first delta goes out while another stream's write is still in flight;
    the slow stream's own later entries wait for it, so its order holds."""
    writer = live.StreamWriter(window=0.01)
    slow, fast = f"byok:turn:{uuid.uuid4()}", f"byok:turn:{uuid.uuid4()}"
    release = threading.Event()
    real_write = writer._write
    in_flight: dict[str, int] = {}
    overlaps: list[str] = []

    async def write(batch):
        for key in batch:
            in_flight[key] = in_flight.get(key, 0) + 1
            if in_flight[key] > 1:
                overlaps.append(key)  # two writes of one stream at once: order at risk
        try:
            if slow in batch:
                while not release.is_set():  # a Redis write that takes its time
                    await asyncio.sleep(0.01)
            await real_write(batch)
        finally:
            for key in batch:
                in_flight[key] -= 1

    monkeypatch.setattr(writer, "_write", write)
    writer.add(slow, "s0 ", now=True)
    time.sleep(0.05)
    writer.add(slow, "s1 ")  # pending behind the write in flight
    finished = threading.Thread(
        target=writer.finish, args=(slow, {"type": "done", "status": "done", "html": ""})
    )
    finished.start()
    started = time.monotonic()
    writer.add(fast, "f0", now=True)
    while not entries(fast) and time.monotonic() - started < 2:
        time.sleep(0.005)
    assert time.monotonic() - started < 1.0, "the other stream's write held this one back"
    assert [f.get("text") for f in entries(fast)] == ["f0"]
    assert entries(slow) == []  # still in flight
    time.sleep(0.1)  # ticks come meanwhile: they must leave the busy stream alone
    release.set()
    finished.join(5)
    assert [(f["type"], f.get("text")) for f in entries(slow)] == [
        ("delta", "s0 "),
        ("delta", "s1 "),
        ("done", None),
    ]
    assert overlaps == []


def test_a_redis_outage_loses_no_turn_and_the_writer_carries_on(monkeypatch):
    writer = live.StreamWriter(window=0.01)
    key = f"byok:turn:{uuid.uuid4()}"
    broken = redis.asyncio.Redis.from_url("redis://127.0.0.1:9", socket_connect_timeout=0.2)
    broken_sync = redis.Redis.from_url("redis://127.0.0.1:9", socket_connect_timeout=0.2)
    monkeypatch.setattr(live, "get_writer_redis", lambda: broken)  # the loop's writes
    monkeypatch.setattr(live, "get_redis", lambda: broken_sync)  # the final event's
    writer.add(key, "lost ", now=True)
    writer.finish(key, {"type": "done", "status": "done", "html": ""})  # returns all the same
    assert entries(key) == []
    monkeypatch.undo()
    writer.add(key, "back", now=True)
    writer.finish(key, {"type": "done", "status": "done", "html": ""})
    assert [(f["type"], f.get("text")) for f in entries(key)] == [
        ("delta", "back"),
        ("done", None),
    ]


def test_one_mget_per_poll_answers_for_every_running_turn(counting_redis):
    watcher = live.CancelWatcher(interval=0.05)
    ids = [uuid.uuid4() for _ in range(20)]
    stopped: list[uuid.UUID] = []

    def stopper(message_id: uuid.UUID) -> Callable[[], None]:
        return lambda: stopped.append(message_id)

    for message_id in ids:
        watcher.watch(streams.cancel_key(message_id), stopper(message_id))
    streams.request_cancel(ids[3])
    streams.request_cancel(ids[11])
    deadline = time.monotonic() + 2
    while len(stopped) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert sorted(stopped) == sorted([ids[3], ids[11]])  # each called once, no others
    for message_id in ids:
        watcher.unwatch(streams.cancel_key(message_id))
    polls = counting_redis.calls.get("mget", 0)
    assert polls >= 2
    assert "exists" not in counting_redis.calls, "no per-turn round trips"


def test_a_watcher_with_nothing_to_watch_asks_redis_nothing(counting_redis):
    watcher = live.CancelWatcher(interval=0.02)
    message_id = uuid.uuid4()
    watcher.watch(streams.cancel_key(message_id), lambda: None)
    watcher.unwatch(streams.cancel_key(message_id))
    time.sleep(0.05)
    before = counting_redis.calls.get("mget", 0)
    time.sleep(0.2)
    assert counting_redis.calls.get("mget", 0) == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "silence",
    [
        {"first_token_delay": 30},  # answered, then silent before the first token
        {"response_delay": 30},  # not even a status line yet
    ],
    ids=["before-the-first-token", "before-the-response-headers"],
)
def test_stop_ends_the_provider_call_even_while_the_provider_is_silent(
    alice, fake_provider, celery_worker, silence
):
    from chat import services
    from chat.models import Message
    from tests.chat_helpers import send, start_chat, wait_final

    fake_provider.script(text="never seen", path="/chat/completions", **silence)
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    deadline = time.monotonic() + 10
    while not aio.calls_in_flight() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert aio.calls_in_flight() == 1, "the provider call should be under way"
    stopped_at = time.monotonic()
    services.turn_cancel(message=reply)
    reply = wait_final(reply, timeout=5)
    assert reply.status == Message.Status.STOPPED
    while aio.calls_in_flight() and time.monotonic() - stopped_at < 5:
        time.sleep(0.02)
    # Without the task's cancel the call would wait out the provider's 30 s silence.
    assert not aio.calls_in_flight()
    assert time.monotonic() - stopped_at < 1.5


def test_a_turn_s_final_event_does_not_wait_for_a_busy_loop():
    """The end of a turn is written by the turn's own thread: a loop held up by other
    streams (or waiting for the interpreter lock) does not delay `done`."""
    writer = live.StreamWriter(window=0.01)
    key = f"byok:turn:{uuid.uuid4()}"
    held = threading.Event()

    def hold_the_loop() -> None:
        held.set()
        time.sleep(1.0)

    relay.relay_loop().call_soon_threadsafe(hold_the_loop)
    assert held.wait(2)
    started = time.monotonic()
    writer.finish(key, {"type": "done", "status": "done", "html": ""})
    assert time.monotonic() - started < 0.5
    assert [f["type"] for f in entries(key)] == ["done"]
    time.sleep(1.0)  # the loop is free again for the next test


def test_a_final_event_is_written_even_when_an_earlier_write_never_ends(monkeypatch):
    writer = live.StreamWriter(window=0.01)
    monkeypatch.setattr(live.StreamWriter, "FINISH_TIMEOUT", 0.2)
    key = f"byok:turn:{uuid.uuid4()}"
    stuck = threading.Event()

    async def write(batch):
        while not stuck.is_set():  # a Redis write that never comes back
            await asyncio.sleep(0.01)

    monkeypatch.setattr(writer, "_write", write)
    writer.add(key, "first ", now=True)
    writer.add(key, "second")
    writer.finish(key, {"type": "done", "status": "done", "html": ""})
    stuck.set()
    # The stream ends (the page stops showing "writing"); the text is in the database.
    assert [(f["type"], f.get("text")) for f in entries(key)] == [
        ("delta", "second"),
        ("done", None),
    ]
