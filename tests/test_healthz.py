from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from django.db import OperationalError, connections
from django.test import override_settings

from core import health
from core.heartbeat import WORKERS_KEY, Heartbeat
from core.redis import get_redis
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def deadline(settings):
    # Room for the parts that are up to answer on a slow, busy machine.
    settings.BYOK_HEALTHZ_TIMEOUT = 3.0


class Blackhole:
    """A TCP server that accepts connections and never answers: a server that hangs (or a
    firewall that drops), the case where a client without timeouts waits for ever."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    server = Blackhole()
    yield server
    server.close()


def postgres_at(port: int) -> dict:
    return {
        **connections["default"].settings_dict,
        "ENGINE": "django.db.backends.postgresql",
        "HOST": "127.0.0.1",
        "PORT": port,
        "NAME": "byok",
        "USER": "byok",
        "PASSWORD": "",
        "OPTIONS": {"pool": {"min_size": 1, "timeout": 30}},
    }


def test_it_is_503_naming_the_worker_when_no_worker_beats(client):
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"] == {"database": "ok", "redis": "ok", "worker": "down"}
    assert body["down"] == ["worker"]


def test_it_is_200_with_a_recent_heartbeat(client):
    Heartbeat("worker@test", interval=10).beat_once()
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok", "worker": "ok"},
        "workers": 1,
    }


def test_a_stale_heartbeat_counts_as_down(client):
    get_redis().zadd(WORKERS_KEY, {"worker@old": time.time() - 3600})
    assert client.get("/healthz").status_code == 503


@override_settings(REDIS_URL="redis://127.0.0.1:1/0")
def test_it_is_503_naming_redis_when_redis_is_down(client):
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["redis"] == "down"
    assert body["checks"]["database"] == "ok"
    assert "redis" in body["down"]


def test_a_real_worker_makes_it_healthy(client, celery_worker):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = client.get("/healthz")
        if response.status_code == 200:
            break
        time.sleep(0.1)
    assert response.status_code == 200, response.json()


def test_it_is_not_cached(client):
    assert "no-cache" in client.get("/healthz")["Cache-Control"]


def test_it_is_503_naming_the_database_when_the_database_never_answers(
    client, blackhole, monkeypatch
):
    monkeypatch.setattr(health, "default_database", lambda: postgres_at(blackhole.port))
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "down"
    assert body["checks"]["redis"] == "ok"
    assert "database" in body["down"]
    wait_until(lambda: blackhole.held, "the check never reached the database")


def test_it_is_503_naming_redis_when_redis_never_answers(client, blackhole, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{blackhole.port}/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"] == {"database": "ok", "redis": "down", "worker": "down"}
    assert body["down"] == ["redis", "worker"]
    wait_until(lambda: blackhole.held, "the check never reached Redis")


def test_the_database_check_gives_up_by_itself_on_a_database_that_never_answers(blackhole):
    """Not the pool's 30 s, nor for ever: a fresh connection with a connect timeout, so the
    check's thread ends soon after the answer went out."""
    with pytest.raises(OperationalError, match="timeout"):
        health.database_check(database=postgres_at(blackhole.port), timeout=0.1)
    wait_until(lambda: blackhole.held, "the check never connected")


def test_the_redis_check_gives_up_by_itself_on_a_redis_that_never_answers(blackhole):
    with pytest.raises(redis.TimeoutError):
        health.redis_check(url=f"redis://127.0.0.1:{blackhole.port}/0", timeout=0.1)
    wait_until(lambda: blackhole.held, "the check never connected")


def test_it_answers_at_its_deadline_while_a_check_is_still_hanging(client, monkeypatch, settings):
    settings.BYOK_HEALTHZ_TIMEOUT = 0.2
    release = threading.Event()

    def hangs(**_: object) -> None:
        release.wait()

    monkeypatch.setattr(health, "database_check", hangs)
    try:
        response = client.get("/healthz")
        assert not release.is_set()  # the database check is still inside
        assert response.status_code == 503
        assert "database" in response.json()["down"]
    finally:
        release.set()
