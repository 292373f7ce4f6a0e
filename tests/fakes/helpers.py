"""Helpers for tests that call providers through the fake provider server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from providers import (
    ChatAdapter,
    ChatEvent,
    ChatRequest,
    ConnectionConfig,
    Finish,
    ProviderError,
    TextDelta,
    Usage,
    aio,
    build_adapter,
    get_preset,
)
from providers import loop as relay
from tests.fakes.provider import FakeProvider

# The fake listens on 127.0.0.1, so calls to it need private endpoints allowed. Short timeouts
# keep failure tests fast.
FAKE_CONFIG = ConnectionConfig(
    allow_private_endpoints=True,
    connect_timeout=2.0,
    read_timeout=2.0,
    pool_timeout=2.0,
    call_deadline=10.0,
)


def point_proxies_nowhere(monkeypatch: Any) -> None:
    """Proxy settings in the environment that would break any call honouring them: a proxy
    would resolve and connect on our behalf, around the network guard."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)


def fake_adapter(
    fake: FakeProvider, preset_slug: str, *, config: ConnectionConfig = FAKE_CONFIG
) -> ChatAdapter:
    """An adapter for a preset, pointed at the fake instead of the vendor."""
    return build_adapter(
        get_preset(preset_slug), config=config, base_url=fake.base_url(preset_slug)
    )


@dataclass
class StreamResult:
    deltas: list[str] = field(default_factory=list)
    usage: Usage | None = None
    finish: Finish | None = None
    error: ProviderError | None = None

    @property
    def text(self) -> str:
        return "".join(self.deltas)


def collect(events: Iterable[ChatEvent]) -> StreamResult:
    """Drain a stream; a `ProviderError` is caught and kept, with what arrived before it."""
    result = StreamResult()
    try:
        for event in events:
            if isinstance(event, TextDelta):
                result.deltas.append(event.text)
            elif isinstance(event, Usage):
                result.usage = event
            else:
                result.finish = event
    except ProviderError as error:
        result.error = error
    return result


async def _gather(
    events: AsyncIterator[ChatEvent],
) -> tuple[list[ChatEvent], ProviderError | None]:
    gathered: list[ChatEvent] = []
    error: ProviderError | None = None
    try:
        async for event in events:
            gathered.append(event)
    except ProviderError as caught:
        error = caught
    await aio.settle()  # the rest of a finished body is read: its connection is free again
    return gathered, error


def stream(adapter: ChatAdapter, request: ChatRequest) -> StreamResult:
    """One reply streamed on the process's relay loop, as a worker streams it; a
    `ProviderError` is kept with what arrived before it, anything else raises here."""
    events, error = relay.call(_gather(adapter.astream_chat(request)))
    result = collect(events)
    result.error = error
    return result


async def _all(events: AsyncIterator[ChatEvent]) -> list[ChatEvent]:
    return [event async for event in events]


def stream_events(adapter: ChatAdapter, request: ChatRequest) -> list[ChatEvent]:
    """Every event of one reply streamed on the relay loop; any error raises here."""
    return relay.call(_all(adapter.astream_chat(request)))
