"""The worker side of the relay: one stream writer and one cancel watcher per process.

Many turns running in one worker process must not each make their own Redis round trips:
the writer sends every turn's pending deltas in one pipeline per tick, and the watcher asks
about every running turn's stop button with one MGET per poll.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from byok_site.redis import get_redis
from chat import streams
from providers import aio


class CountingRedis:
    """The real client, counting pipelines executed and commands sent by name."""

    def __init__(self) -> None:
        self.real = get_redis()
        self.pipelines = 0
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def pipeline(self, *args, **kwargs):
        pipe = self.real.pipeline(*args, **kwargs)
        execute = pipe.execute

        def counted_execute(*a, **k):
            with self.lock:
                self.pipelines += 1
            return execute(*a, **k)

        pipe.execute = counted_execute  # type: ignore[method-assign]
        return pipe

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
    monkeypatch.setattr(streams, "get_redis", lambda: counter)
    return counter


def entries(key: str) -> list[dict[str, str]]:
    found: Any = get_redis().xrange(key)
    return [dict(fields) for _, fields in found]


def test_many_turns_share_one_pipeline_per_tick_and_keep_their_order(counting_redis):
    writer = streams.StreamWriter(window=0.05)
    turns = [f"byok:turn:{uuid.uuid4()}" for _ in range(8)]
    tokens = 30

    def run(key: str) -> None:
        writer.add(key, "t0 ", now=True)  # the first token goes out at once
        for index in range(1, tokens):
            writer.add(key, f"t{index} ")
            time.sleep(0.01)  # 100 tokens/s
        writer.finish(key, {"type": "done", "status": "done", "html": "", "notice": ""})

    threads = [threading.Thread(target=run, args=(key,)) for key in turns]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    expected = "".join(f"t{index} " for index in range(tokens))
    for key in turns:
        stream = entries(key)
        assert stream[-1]["type"] == "done"
        assert all(fields["type"] == "delta" for fields in stream[:-1])
        assert "".join(fields["text"] for fields in stream[:-1]) == expected
        assert len(stream) < tokens / 2, "deltas within one tick share one entry"
        assert get_redis().ttl(key) > 0
    # One first write and one final write per turn, plus one pipeline per tick for all of
    # them; a writer per turn would need about (elapsed / window) pipelines per turn.
    ticks = elapsed / writer.window + 2
    assert counting_redis.pipelines <= 2 * len(turns) + ticks, counting_redis.pipelines
    assert counting_redis.pipelines < len(turns) * ticks / 2


def test_a_final_event_carries_the_deltas_still_waiting_for_a_tick(counting_redis):
    writer = streams.StreamWriter(window=5.0)  # no tick will come in time
    key = f"byok:turn:{uuid.uuid4()}"
    writer.add(key, "first ", now=True)
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
    writer = streams.StreamWriter(window=0.01)
    slow, fast = f"byok:turn:{uuid.uuid4()}", f"byok:turn:{uuid.uuid4()}"
    release = threading.Event()
    real_write = writer._write
    in_flight: dict[str, int] = {}
    overlaps: list[str] = []
    guard = threading.Lock()

    def write(batch, *, final=None):
        with guard:
            for key in batch:
                in_flight[key] = in_flight.get(key, 0) + 1
                if in_flight[key] > 1:
                    overlaps.append(key)  # two writes of one stream at once: order at risk
        try:
            if slow in batch and not release.is_set():
                assert release.wait(5)
            real_write(batch, final=final)
        finally:
            with guard:
                for key in batch:
                    in_flight[key] -= 1

    monkeypatch.setattr(writer, "_write", write)
    first = threading.Thread(target=writer.add, args=(slow, "s0 "), kwargs={"now": True})
    first.start()
    time.sleep(0.05)
    writer.add(slow, "s1 ")  # pending behind the write in flight
    finished = threading.Thread(
        target=writer.finish, args=(slow, {"type": "done", "status": "done", "html": ""})
    )
    finished.start()
    started = time.monotonic()
    writer.add(fast, "f0", now=True)
    assert time.monotonic() - started < 1.0, "the other stream's write held this one back"
    assert [f.get("text") for f in entries(fast)] == ["f0"]
    assert entries(slow) == []  # still in flight
    time.sleep(0.1)  # ticks come meanwhile: they must leave the busy stream alone
    release.set()
    first.join(5)
    finished.join(5)
    assert [(f["type"], f.get("text")) for f in entries(slow)] == [
        ("delta", "s0 "),
        ("delta", "s1 "),
        ("done", None),
    ]
    assert overlaps == []


def test_one_mget_per_poll_answers_for_every_running_turn(counting_redis):
    watcher = streams.CancelWatcher(interval=0.05)
    ids = [uuid.uuid4() for _ in range(20)]
    stopped: list[uuid.UUID] = []

    def stopper(message_id: uuid.UUID) -> Callable[[], None]:
        return lambda: stopped.append(message_id)

    for message_id in ids:
        watcher.watch(message_id, stopper(message_id))
    streams.request_cancel(ids[3])
    streams.request_cancel(ids[11])
    deadline = time.monotonic() + 2
    while len(stopped) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert sorted(stopped) == sorted([ids[3], ids[11]])  # each called once, no others
    for message_id in ids:
        watcher.unwatch(message_id)
    polls = counting_redis.calls.get("mget", 0)
    assert polls >= 2
    assert "exists" not in counting_redis.calls, "no per-turn round trips"


def test_a_watcher_with_nothing_to_watch_asks_redis_nothing(counting_redis):
    watcher = streams.CancelWatcher(interval=0.02)
    message_id = uuid.uuid4()
    watcher.watch(message_id, lambda: None)
    watcher.unwatch(message_id)
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
