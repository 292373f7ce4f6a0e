"""The ASGI application: a page request enters a worker thread once, not once per middleware."""

from __future__ import annotations

import httpx
import pytest
from asgiref import sync

from tests.chat_helpers import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def thread_hops(monkeypatch):
    """Counts every sync_to_async call (each is a hop from the event loop to a thread)."""
    calls = {"n": 0}
    original = sync.SyncToAsync.__call__

    async def counting(self, *args, **kwargs):
        calls["n"] += 1
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__call__", counting)
    return calls


def test_a_page_runs_every_middleware_and_the_view_in_one_thread_hop(
    alice, asgi_server, thread_hops
):
    with httpx.Client(base_url=asgi_server.url, cookies=session_cookie(alice)) as client:
        client.get("/chat/").raise_for_status()  # warm: lazy setup may hop once more
        thread_hops["n"] = 0
        response = client.get("/chat/")
    assert response.status_code == 200
    assert "Content-Security-Policy" in response.headers  # the whole chain ran
    # Into the chain, the view, and Django's own signal and connection bookkeeping (5 here);
    # async-mode MiddlewareMixins would add two hops each (19 without SyncChain).
    assert thread_hops["n"] <= 6, thread_hops["n"]
