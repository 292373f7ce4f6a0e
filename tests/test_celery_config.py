from __future__ import annotations

import time

from byok_site.celery import app
from core.heartbeat import WORKERS_KEY, Heartbeat, live_workers
from core.redis import get_redis


def test_it_speaks_json_only_and_keeps_no_results():
    conf = app.conf
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.task_ignore_result is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_soft_time_limit < conf.task_time_limit
    assert conf.task_acks_late is True


def test_it_routes_turns_to_their_own_queue():
    assert app.amqp.router.route({}, "chat.tasks.generate_reply")["queue"].name == "turns"
    assert app.amqp.router.route({}, "accounts.tasks.x")["queue"].name == "default"


def test_beat_runs_a_registered_task():
    app.loader.import_default_modules()
    for entry in app.conf.beat_schedule.values():
        assert entry["task"] in app.tasks


def test_a_stopped_heartbeat_removes_its_worker():
    # It beats at once, then waits: `stop` finds it waiting, not in the middle of a beat
    # that would land after the removal (its join gives up after `interval + 1` seconds).
    heartbeat = Heartbeat("worker@a", interval=30)
    heartbeat.start()
    deadline = time.monotonic() + 30
    while "worker@a" not in live_workers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "worker@a" in live_workers(), "the heartbeat never beat"
    heartbeat.stop()
    assert get_redis().zscore(WORKERS_KEY, "worker@a") is None
