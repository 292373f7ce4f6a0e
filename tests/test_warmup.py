"""Start-up warm-up (byok_site.warmup): a fresh process is ready before its first user."""

from __future__ import annotations

import sys
import time

from celery.contrib.testing.worker import start_worker

from byok_site import warmup
from byok_site.celery import app as celery_app
from providers import aio
from providers import loop as relay


def _relay_sessions() -> list[object]:
    loop_id = id(relay.relay_loop())
    return [session for key, session in aio._sessions.items() if key[0] == loop_id]


def test_the_warm_ups_open_no_database_connection():
    # No `db` fixture: pytest-django fails any query or connection made here.
    warmup.web()
    warmup.worker()
    assert "chat.tasks" in sys.modules


def test_a_starting_worker_opens_its_provider_sessions_before_the_first_turn(
    transactional_db, redis_server
):
    relay.submit(aio.close_sessions()).result(timeout=10)  # as in a fresh process
    assert _relay_sessions() == []
    with start_worker(
        celery_app,
        pool="threads",
        concurrency=1,
        perform_ping_check=False,
        loglevel="WARNING",
        queues=["turns"],
        shutdown_timeout=10,
    ):
        deadline = time.monotonic() + 10
        while not _relay_sessions() and time.monotonic() < deadline:
            time.sleep(0.05)
        sessions = _relay_sessions()
    assert len(sessions) == 2  # https, and plain http to allowed addresses
    assert not any(session.closed for session in sessions)  # type: ignore[attr-defined]
