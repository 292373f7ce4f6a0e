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

from completion import engine
from core import streams as live
from core.redis import get_redis
from providers import aio
from providers import loop as relay
from tests.waiting import wait_until


class CountingRedis:
    """The real client, counting commands sent by name (and by the thread sending them)."""

    def __init__(self) -> None:
        self.real = get_redis()
        self.calls: dict[str, int] = {}
        self.callers: dict[str, list[threading.Thread]] = {}
        self.lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            self.callers.setdefault(name, []).append(threading.current_thread())

    def calls_from(self, name: str, thread: threading.Thread | None) -> int:
        with self.lock:
            return sum(caller is thread for caller in self.callers.get(name, []))

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


def counted_ticks(writer: live.StreamWriter, monkeypatch) -> list[None]:
    """One item per tick the writer's timer runs, however late the loop gets to it."""
    ticks: list[None] = []
    real_tick = writer._tick

    def tick() -> None:
        ticks.append(None)
        real_tick()

    monkeypatch.setattr(writer, "_tick", tick)  # `_ensure_tick` schedules `self._tick`
    return ticks


class WatcherRounds:
    """Stands in for `time` in core.streams: counts the rounds of one cancel watcher's loop
    (each starts with its sleep) and passes everything else through."""

    def __init__(self, watcher: live.CancelWatcher) -> None:
        self.watcher = watcher
        self.count = 0

    def sleep(self, seconds: float) -> None:
        if threading.current_thread() is self.watcher._thread:
            self.count += 1
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_many_turns_share_one_pipeline_per_tick_and_keep_their_order(monkeypatch):
    writer = live.StreamWriter(window=0.05)
    writes = counted_writes(writer, monkeypatch)
    ticks = counted_ticks(writer, monkeypatch)
    turns = [f"byok:turn:{uuid.uuid4()}" for _ in range(8)]
    tokens = 30

    async def run(key: str) -> None:  # on the relay loop, as a provider stream's reader is
        writer.add(key, "t0 ", now=True)  # the first token goes out at once
        for index in range(1, tokens):
            writer.add(key, f"t{index} ")
            if index % 3 == 0:  # 100 tokens/s, three at a time: no tick comes between those
                await asyncio.sleep(0.03)

    readers = [relay.submit(run(key)) for key in turns]
    for reader in readers:
        reader.result(timeout=30)
    for key in turns:  # from the turns' own threads, as a turn ends
        writer.finish(key, {"type": "done", "status": "done", "html": "", "notice": ""})

    expected = "".join(f"t{index} " for index in range(tokens))
    for key in turns:
        stream = entries(key)
        assert stream[-1]["type"] == "done"
        assert all(fields["type"] == "delta" for fields in stream[:-1])
        assert "".join(fields["text"] for fields in stream[:-1]) == expected
        assert len(stream) < tokens / 2, "deltas within one tick share one entry"
        assert get_redis().ttl(key) > 0
    # One first write per turn (the final ones are the turns' own), plus one pipeline per
    # tick for all of them, where a writer per turn would send one per turn and tick.
    assert len(writes) <= len(turns) + len(ticks), (len(writes), len(ticks))
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
    ticks = counted_ticks(writer, monkeypatch)
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
    wait_until(lambda: in_flight.get(slow) == 1, "the slow stream's first write never started")
    writer.add(slow, "s1 ")  # pending behind the write in flight
    finished = threading.Thread(
        target=writer.finish, args=(slow, {"type": "done", "status": "done", "html": ""})
    )
    finished.start()
    writer.add(fast, "f0", now=True)
    # The slow write stays in flight until the test releases it: the fast one lands meanwhile.
    wait_until(lambda: entries(fast), "the other stream's write held this one back")
    assert [f.get("text") for f in entries(fast)] == ["f0"]
    assert entries(slow) == []  # still in flight
    # Ticks come meanwhile (s1 is pending): they must leave the busy stream alone.
    seen = len(ticks)
    wait_until(lambda: len(ticks) >= seen + 3, "no tick came while the slow write was in flight")
    release.set()
    finished.join(30)
    assert not finished.is_alive(), "the slow stream's final event was never written"
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


def test_one_mget_per_poll_answers_for_every_running_turn(counting_redis, monkeypatch):
    watcher = live.CancelWatcher(interval=0.05)
    rounds = WatcherRounds(watcher)
    monkeypatch.setattr(live, "time", rounds)
    ids = [uuid.uuid4() for _ in range(20)]
    stopped: list[uuid.UUID] = []

    def stopper(message_id: uuid.UUID) -> Callable[[], None]:
        return lambda: stopped.append(message_id)

    for message_id in ids:
        watcher.watch(engine.cancel_key(message_id), stopper(message_id))
    engine.request_cancel(ids[3])
    engine.request_cancel(ids[11])
    wait_until(lambda: len(stopped) >= 2, "the watcher never saw the stop buttons")
    # A whole round more, both flags still set: it calls back nobody, as the watcher
    # forgets a key once stopped (the next round's start is the end of that one).
    seen = rounds.count
    wait_until(lambda: rounds.count >= seen + 2, "the watcher's loop stopped")
    assert sorted(stopped) == sorted([ids[3], ids[11]])  # each called once, no others
    for message_id in ids:
        watcher.unwatch(engine.cancel_key(message_id))
    assert counting_redis.calls_from("mget", watcher._thread) >= 2
    assert "exists" not in counting_redis.calls, "no per-turn round trips"


def test_a_watcher_with_nothing_to_watch_asks_redis_nothing(counting_redis, monkeypatch):
    watcher = live.CancelWatcher(interval=0.02)
    rounds = WatcherRounds(watcher)
    monkeypatch.setattr(live, "time", rounds)
    message_id = uuid.uuid4()
    watcher.watch(engine.cancel_key(message_id), lambda: None)
    watcher.unwatch(engine.cancel_key(message_id))
    unwatched = rounds.count
    # The round under way may have looked before the unwatch: wait for it to end.
    wait_until(lambda: rounds.count >= unwatched + 1, "the watcher's loop is not running")
    before = counting_redis.calls_from("mget", watcher._thread)
    # Two whole rounds later, with nothing to watch in either of them.
    wait_until(lambda: rounds.count >= unwatched + 3, "the watcher's loop stopped")
    assert counting_redis.calls_from("mget", watcher._thread) == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "silence",
    [
        # Silences longer than the waits below (and shorter than the read timeout).
        {"first_token_delay": 120},  # answered, then silent before the first token
        {"response_delay": 120},  # not even a status line yet
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
    wait_until(aio.calls_in_flight, "the provider call never started")
    assert aio.calls_in_flight() == 1, "the provider call should be under way"
    services.turn_cancel(message=reply)
    reply = wait_final(reply, timeout=30)
    assert reply.status == Message.Status.STOPPED
    # Without the task's cancel the call would wait out the provider's 120 s silence.
    wait_until(lambda: not aio.calls_in_flight(), "the provider call outlived the stop")


def test_a_turn_s_final_event_does_not_wait_for_a_busy_loop():
    """The end of a turn is written by the turn's own thread: a loop held up by other
    streams (or waiting for the interpreter lock) does not delay `done`."""
    writer = live.StreamWriter(window=0.01)
    key = f"byok:turn:{uuid.uuid4()}"
    held, release, let_go = threading.Event(), threading.Event(), threading.Event()

    def hold_the_loop() -> None:  # the loop runs nothing else until the test lets it go
        held.set()
        release.wait(30)
        let_go.set()

    relay.relay_loop().call_soon_threadsafe(hold_the_loop)
    assert held.wait(30)
    try:
        writer.finish(key, {"type": "done", "status": "done", "html": ""})
        assert not let_go.is_set(), "the final event waited for the loop"
        assert [f["type"] for f in entries(key)] == ["done"]
    finally:
        release.set()
        relay.submit(asyncio.sleep(0)).result(timeout=30)  # the loop is free for the next test


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
