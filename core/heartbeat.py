"""Worker heartbeats in Redis: each worker writes `hostname -> now` into the sorted set
`byok:workers` every `WORKER_HEARTBEAT_INTERVAL` seconds; `/healthz` and the operator
dashboard read the live ones."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps
from django.conf import settings

from core.redis import get_redis

logger = logging.getLogger(__name__)

WORKERS_KEY = "byok:workers"


class Heartbeat:
    """Writes `hostname -> now` into `byok:workers` every `interval` seconds until stopped."""

    def __init__(self, hostname: str, interval: float) -> None:
        self.hostname = hostname
        self.interval = interval
        self._stop = threading.Event()
        self._beating = threading.Lock()  # held while a beat is written
        self._thread = threading.Thread(target=self._run, name="byok-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._beating:  # a beat under way lands first; none starts after this
            try:
                get_redis().zrem(WORKERS_KEY, self.hostname)
            except Exception:
                logger.debug("could not remove heartbeat for %s", self.hostname)
        self._thread.join(timeout=self.interval + 1)

    terminate = stop

    def beat_once(self) -> None:
        get_redis().zadd(WORKERS_KEY, {self.hostname: time.time()})

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._beating:
                if self._stop.is_set():
                    break
                try:
                    self.beat_once()
                except Exception:
                    logger.warning("worker heartbeat failed", exc_info=True)
            self._stop.wait(self.interval)


class HeartbeatStep(bootsteps.StartStopStep):
    """A worker bootstep, so every worker beats: `celery worker` and test workers alike.

    Celery calls `obj.start()` when the worker starts and `obj.stop()` (or `terminate()`)
    when it stops.
    """

    def create(self, parent: Any) -> Heartbeat:  # type: ignore[override]
        self.obj = Heartbeat(parent.hostname, settings.WORKER_HEARTBEAT_INTERVAL)
        return self.obj


def live_workers(max_age: float | None = None, *, client: redis.Redis | None = None) -> list[str]:
    """Hostnames whose heartbeat is newer than `max_age` seconds (3 intervals by default),
    read through `client` (the process's, `get_redis()`, by default)."""
    if max_age is None:
        max_age = settings.WORKER_HEARTBEAT_INTERVAL * 3
    client = client or get_redis()
    members = client.zrangebyscore(WORKERS_KEY, time.time() - max_age, "+inf")
    return [str(member) for member in members]
