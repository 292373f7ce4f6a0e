"""Start-up warm-up (byok_site.warmup): a fresh process is ready before its first user."""

from __future__ import annotations

import logging
import sys
import time

import aiohttp
import pytest

from byok_site import warmup
from core.warmup import quietly
from providers import aio
from providers import loop as relay


def _relay_sessions() -> list[aiohttp.ClientSession]:
    loop_id = id(relay.relay_loop())
    # A snapshot: the relay loop's thread may add a session meanwhile.
    return [session for key, session in list(aio._sessions.items()) if key[0] == loop_id]


@pytest.fixture
def fresh_relay_sessions() -> None:
    """The relay loop without provider sessions, as in a process that just started."""
    relay.submit(aio.close_sessions()).result(timeout=10)
    assert _relay_sessions() == []


def test_the_warm_ups_open_no_database_connection():
    # No `db` fixture: pytest-django fails any query or connection made here.
    warmup.web()
    warmup.worker()
    assert "chat.tasks" in sys.modules


def test_a_starting_worker_opens_its_provider_sessions_before_the_first_turn(
    fresh_relay_sessions, celery_worker
):
    deadline = time.monotonic() + 30
    while len(_relay_sessions()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_relay_sessions()) == 2  # https, and plain http to allowed addresses


def test_a_failing_warm_up_is_only_logged(caplog):
    def broken() -> None:
        raise RuntimeError("no trust store")

    with caplog.at_level(logging.WARNING, logger="core.warmup"):
        quietly(broken)
    assert "warm-up failed" in caplog.text
