"""The Celery app: JSON only, no result backend, explicit limits, a heartbeat in Redis.

State lives in the database, so results are ignored. Each worker writes a heartbeat into a
Redis sorted set (`byok:workers`, member = hostname, score = unix time) that `/healthz` and
the operator dashboard read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Celery, bootsteps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "byok_site.settings")

logger = logging.getLogger(__name__)

WORKERS_KEY = "byok:workers"

app = Celery("byok_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    event_serializer="json",
    task_ignore_result=True,
    result_backend=None,
    worker_prefetch_multiplier=1,
    # A task is acknowledged after it runs, so a worker that dies mid-task gives it back;
    # tasks are written to be safe to deliver twice (they claim their row first).
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 3600},
    task_default_queue="default",
    task_routes={
        "chat.tasks.*": {"queue": "turns"},
        "keys.tasks.*": {"queue": "default"},
        "usage.tasks.*": {"queue": "default"},
        "accounts.tasks.*": {"queue": "default"},
    },
    beat_schedule={
        "reap-stuck-turns": {"task": "chat.tasks.reap_stuck_turns", "schedule": 60},
        "purge-temporary-conversations": {
            "task": "chat.tasks.purge_temporary_conversations",
            "schedule": 60 * 15,
        },
        "notify-key-problems": {"task": "usage.tasks.notify_key_problems", "schedule": 60 * 60},
        "recheck-provider-keys": {
            "task": "keys.tasks.recheck_provider_keys",
            "schedule": 60 * 60,
        },
        "expire-account-exports": {
            "task": "accounts.tasks.expire_account_exports",
            "schedule": 60 * 60,
        },
        "clear-expired-sessions": {
            "task": "accounts.tasks.clear_expired_sessions",
            "schedule": 60 * 60 * 6,
        },
    },
    worker_hijack_root_logger=False,
)
app.autodiscover_tasks()


class Heartbeat:
    """Writes `hostname -> now` into `byok:workers` every `interval` seconds until stopped."""

    def __init__(self, hostname: str, interval: float) -> None:
        self.hostname = hostname
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="byok-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 1)
        try:
            from byok_site.redis import get_redis

            get_redis().zrem(WORKERS_KEY, self.hostname)
        except Exception:
            logger.debug("could not remove heartbeat for %s", self.hostname)

    terminate = stop

    def beat_once(self) -> None:
        from byok_site.redis import get_redis

        get_redis().zadd(WORKERS_KEY, {self.hostname: time.time()})

    def _run(self) -> None:
        while not self._stop.is_set():
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
        from django.conf import settings

        self.obj = Heartbeat(parent.hostname, settings.WORKER_HEARTBEAT_INTERVAL)
        return self.obj


class WarmUpStep(bootsteps.StartStopStep):
    """Warms the worker for its first turn (`byok_site.warmup.worker`) on a thread of its
    own, so the worker takes tasks at once; a turn that comes first does that work itself.

    Thread pools only: the warm state lives in the process that runs the turns, and a
    prefork pool would fork its children from a parent that may be importing right then.
    """

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.thread: threading.Thread | None = None

    def include_if(self, parent: Any) -> bool:
        return getattr(parent.pool_cls, "__module__", "") == "celery.concurrency.thread"

    def start(self, parent: Any) -> None:
        from byok_site import warmup

        self.thread = threading.Thread(
            target=warmup.quietly, args=(warmup.worker,), name="byok-warm-up", daemon=True
        )
        self.thread.start()

    def stop(self, parent: Any) -> None:
        if self.thread is not None:
            self.thread.join(timeout=30)  # a stopped worker leaves no warm-up behind

    terminate = stop


app.steps["worker"].add(HeartbeatStep)
app.steps["worker"].add(WarmUpStep)


def live_workers(max_age: float | None = None) -> list[str]:
    """Hostnames whose heartbeat is newer than `max_age` seconds (3 intervals by default)."""
    from django.conf import settings

    from byok_site.redis import get_redis

    if max_age is None:
        max_age = settings.WORKER_HEARTBEAT_INTERVAL * 3
    members = get_redis().zrangebyscore(WORKERS_KEY, time.time() - max_age, "+inf")
    return [str(member) for member in members]
