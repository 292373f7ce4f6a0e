"""Shared fixtures: real Redis, real database, users, a real Celery worker, a browser.

With REDIS_URL unset, the bundled redis-server starts on a temporary Unix socket for the
session; with it set (CI), that server is used and its database is flushed between tests,
so point it at a database number of the project's own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from byok_site.celery import app as celery_app
from byok_site.settings import celery_broker_url
from core.embedded_redis import EmbeddedRedis
from core.redis import get_redis
from tests.waiting import wait_until

pytest_plugins = ["tests.fakes.fixtures"]  # fake_provider, fake_provider_server

PASSWORD = "correct horse battery staple 42"


@pytest.fixture(scope="session", autouse=True)
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis URL for the whole session: the given REDIS_URL, else the bundled server."""
    if settings.REDIS_URL:
        yield settings.REDIS_URL
        return
    socket_dir = Path(tmp_path_factory.mktemp("redis"))
    with EmbeddedRedis(socket_dir / "redis.sock") as server:
        settings.REDIS_URL = server.url
        celery_app.conf.update(broker_url=celery_broker_url(server.url))
        yield server.url


@pytest.fixture(autouse=True)
def _clean_redis(redis_server: str) -> Iterator[None]:
    get_redis().flushdb()
    yield


@pytest.fixture
def alice(db):
    from accounts.models import User

    return User.objects.create_user(email="alice@example.com", password=PASSWORD)


@pytest.fixture
def bob(db):
    from accounts.models import User

    return User.objects.create_user(email="bob@example.com", password=PASSWORD)


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def celery_worker(transactional_db, redis_server):
    """A real Celery worker in a thread, consuming from the real Redis broker."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        celery_app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="WARNING",
        queues=["default", "turns"],
        shutdown_timeout=10,
    ) as worker:
        yield worker


# --- Browser tests -------------------------------------------------------------------------

CHROMIUM = os.environ.get("BYOK_CHROMIUM", "/usr/bin/chromium")


def _chromium_available() -> bool:
    return bool(shutil.which(CHROMIUM) or os.access(CHROMIUM, os.X_OK))


@pytest.fixture(scope="session")
def browser():
    if not _chromium_available():
        reason = f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("BYOK_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BYOK_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    # Playwright's sync API runs an event loop in this thread; the test code itself is
    # synchronous and may use the ORM.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()


# --- A real ASGI server (uvicorn), for streaming responses -------------------------------------


class AsgiServer:
    def __init__(self, url: str) -> None:
        self.url = url


@contextlib.contextmanager
def serve_asgi(**options: Any) -> Iterator[AsgiServer]:
    """The project's ASGI app under uvicorn in a thread, on a free port of 127.0.0.1.

    `options` are uvicorn.Config's; by default the client address is never rewritten from
    X-Forwarded-For, as in every web command of the project (`--no-proxy-headers`)."""
    import socket
    import threading

    import uvicorn

    from byok_site.asgi import application

    options = {"proxy_headers": False, **options}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        application, lifespan="off", log_level="warning", access_log=False, **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "uvicorn did not start", timeout=10)
    try:
        yield AsgiServer(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def asgi_server(transactional_db):
    """The project's ASGI app under uvicorn in a thread, so SSE responses really stream
    (the WSGI live server buffers async iterators)."""
    with serve_asgi() as server:
        yield server
