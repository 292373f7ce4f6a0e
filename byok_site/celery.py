"""The Celery app: JSON only, no result backend, explicit limits, a heartbeat in Redis.

State lives in the database, so results are ignored. Each worker writes a heartbeat
(`core.heartbeat`) that `/healthz` and the operator dashboard read, and warms up as it
starts (`byok_site.warmup.worker`).
"""

from __future__ import annotations

import os

from celery import Celery

from core import warmup
from core.heartbeat import HeartbeatStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "byok_site.settings")

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
        "privacy.tasks.*": {"queue": "default"},
    },
    beat_schedule={
        # Often enough to end a turn whose worker died within ~30 s (three 10 s leases);
        # a sweep that no worker takes in time is dropped, not piled up.
        "reap-stuck-turns": {
            "task": "chat.tasks.reap_stuck_turns",
            "schedule": 10,
            "options": {"expires": 10},
        },
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
            "task": "privacy.tasks.expire_account_exports",
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


class WarmUpStep(warmup.WarmUpStep):
    """Warms a worker for its first turn."""

    warm = "byok_site.warmup.worker"


app.steps["worker"].add(HeartbeatStep)
app.steps["worker"].add(WarmUpStep)
