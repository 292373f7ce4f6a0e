from __future__ import annotations

import time

import pytest
from django.test import override_settings

from core.heartbeat import WORKERS_KEY, Heartbeat
from core.redis import get_redis

pytestmark = pytest.mark.django_db


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
