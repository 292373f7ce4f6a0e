"""The one HTTP client of provider calls (`providers.aio`, aiohttp on an event loop): its
sessions, connections, deadlines and cancellation, and the network guard at connect time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from providers import (
    BlockedEndpoint,
    ChatAdapter,
    ChatEvent,
    ChatMessage,
    ChatRequest,
    ConnectionConfig,
    InvalidEndpoint,
    ProviderError,
    ProviderErrorKind,
    Role,
    aio,
    build_adapter,
    check_endpoint,
    get_preset,
)
from providers import loop as relay
from providers.base import HttpAdapter
from tests.fakes.helpers import (
    FAKE_CONFIG,
    StreamResult,
    collect,
    fake_adapter,
    point_proxies_nowhere,
)
from tests.fakes.provider import FakeProvider
from tests.test_netguard import CountingResolver, Pki, pki, tls_config, tls_fake

pytest_plugins = ["tests.fakes.fixtures"]

__all__ = ["pki", "tls_fake"]  # fixtures shared with the blocking client's guard tests

KEY = "sk-aio-test-0011"
T = TypeVar("T")


def hello(model: str = "m") -> ChatRequest:
    return ChatRequest(model=model, messages=[ChatMessage(Role.USER, "hi")], api_key=KEY)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on a loop of the test's own, closing the loop's sessions afterwards. On a thread
    of its own: the browser tests' Playwright keeps a loop running on the main thread."""

    async def main() -> T:
        try:
            return await coro
        finally:
            await aio.close_sessions()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def _collect(events: AsyncIterator[ChatEvent]) -> StreamResult:
    collected: list[ChatEvent] = []
    result = StreamResult()
    try:
        async for event in events:
            collected.append(event)
    except ProviderError as error:
        result.error = error
    kept = collect(collected)
    kept.error = result.error
    return kept


def acollect(
    adapter: ChatAdapter | HttpAdapter, request: ChatRequest | None = None
) -> StreamResult:
    return run(_collect(adapter.astream_chat(request or hello())))


@pytest.mark.parametrize(
    "bad", [{"read_timeout": 0}, {"call_deadline": -1}, {"max_connections": 0}]
)
def test_it_refuses_a_configuration_without_limits(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ConnectionConfig(**bad)  # type: ignore[arg-type]


def test_each_configuration_has_one_session_per_loop(fake_provider: FakeProvider) -> None:
    other = dataclasses.replace(FAKE_CONFIG, read_timeout=9.0)

    async def sessions() -> list[object]:
        return [
            aio.session_for(FAKE_CONFIG, public_allowed=True),
            aio.session_for(dataclasses.replace(FAKE_CONFIG), public_allowed=True),
            aio.session_for(other, public_allowed=True),
            aio.session_for(FAKE_CONFIG, public_allowed=False),
        ]

    same, equal, different, plain_http = run(sessions())
    assert same is equal
    assert len({id(same), id(different), id(plain_http)}) == 3


def test_a_gemini_model_id_that_cannot_go_in_the_url_is_refused_before_any_request(
    fake_provider: FakeProvider,
) -> None:
    from providers import InvalidChatRequest

    adapter = fake_adapter(fake_provider, "gemini")
    with pytest.raises(InvalidChatRequest):
        acollect(adapter, hello(model="../files"))
    assert fake_provider.requests == []


def test_a_finished_reply_leaves_its_connection_for_the_next_call(
    fake_provider: FakeProvider,
) -> None:
    resolver = CountingResolver(["127.0.0.1"])
    config = dataclasses.replace(FAKE_CONFIG, resolver=resolver)
    adapter = build_adapter(
        get_preset("custom"),
        config=config,
        base_url=f"http://api.provider.test:{fake_provider.port}/v1",
    )

    async def twice() -> list[StreamResult]:
        first = await _collect(adapter.astream_chat(hello()))
        await aio.settle()  # the rest of the body, read after the end marker
        return [first, await _collect(adapter.astream_chat(hello()))]

    first, second = run(twice())

    assert first.error is None and second.error is None
    # "api.provider.test" is in no DNS: only the guard's lookup was used, once, for the one
    # connection both calls shared; the Host header keeps the name.
    assert resolver.lookups == [("api.provider.test", fake_provider.port)]
    hosts = {request.headers["host"] for request in fake_provider.requests}
    assert hosts == {f"api.provider.test:{fake_provider.port}"}


@pytest.mark.parametrize("preset", ["openai", "anthropic"])
def test_a_complete_reply_is_not_held_by_a_body_left_open_after_its_end_marker(
    fake_provider: FakeProvider, preset: str
) -> None:
    # The end marker arrived: the reply is done even though the server keeps the body open
    # far past the call's deadline (waiting for it would end the call in a timeout); the
    # rest is read in the background.
    config = dataclasses.replace(FAKE_CONFIG, call_deadline=5.0)
    fake_provider.script(text="All here.", linger_after_end=20.0)

    result = acollect(fake_adapter(fake_provider, preset, config=config))

    assert result.error is None
    assert result.text == "All here."
    assert result.finish is not None


def test_the_read_timeout_and_the_call_deadline_end_a_silent_or_endless_call(
    fake_provider: FakeProvider,
) -> None:
    silent = dataclasses.replace(FAKE_CONFIG, read_timeout=0.3)
    fake_provider.script(text="late", first_token_delay=3)
    result = acollect(fake_adapter(fake_provider, "openai", config=silent))
    assert result.error is not None and result.error.kind is ProviderErrorKind.TIMEOUT
    assert result.deltas == []

    # Ten seconds of reply at the fake's pace, a two-second deadline.
    endless = dataclasses.replace(FAKE_CONFIG, call_deadline=2.0)
    fake_provider.script(text="word " * 200, tokens_per_second=20)
    result = acollect(fake_adapter(fake_provider, "openai", config=endless))
    assert result.error is not None and result.error.kind is ProviderErrorKind.TIMEOUT
    assert "took too long" in result.error.user_message
    assert len(result.deltas) < 200
    assert ("word " * 200).startswith(result.text), "what arrived before the deadline is kept"


def test_cancelling_the_task_ends_a_call_the_provider_has_not_answered(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(text="never", response_delay=30)
    adapter = fake_adapter(fake_provider, "openai")

    async def cancel_midway() -> int:
        task = asyncio.ensure_future(_collect(adapter.astream_chat(hello())))
        while not fake_provider.requests:
            await asyncio.sleep(0.01)
        assert aio.calls_in_flight() == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # at once: the fake would not answer for thirty seconds
        return aio.calls_in_flight()

    assert run(cancel_midway()) == 0


def test_the_relay_loop_runs_submitted_calls_on_its_own_thread(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(text="from the loop")
    adapter = fake_adapter(fake_provider, "anthropic")

    future = relay.submit(_collect(adapter.astream_chat(hello())))

    assert future.result(timeout=10).text == "from the loop"
    assert relay.relay_loop() is relay.relay_loop()


def test_it_ignores_proxy_settings_and_keeps_no_cookies(
    fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_proxies_nowhere(monkeypatch)
    config = dataclasses.replace(FAKE_CONFIG, user_agent="byok-aio-test")
    adapter = fake_adapter(fake_provider, "openai", config=config)
    fake_provider.script(text="one", headers={"set-cookie": "session=someone-elses; Path=/"})
    fake_provider.script(text="two")

    async def twice() -> list[StreamResult]:
        return [await _collect(adapter.astream_chat(hello())) for _ in range(2)]

    results = run(twice())

    assert [r.text for r in results] == ["one", "two"]
    assert fake_provider.requests[0].headers["user-agent"] == "byok-aio-test"
    assert "cookie" not in fake_provider.requests[1].headers


# -- the network guard -------------------------------------------------------------------------


def guarded(
    fake: FakeProvider,
    base_url: str,
    *,
    allow_private_endpoints: bool = True,
    answers: Sequence[Sequence[str]] = (),
) -> HttpAdapter:
    config = dataclasses.replace(
        FAKE_CONFIG,
        allow_private_endpoints=allow_private_endpoints,
        resolver=CountingResolver(*answers) if answers else FAKE_CONFIG.resolver,
    )
    adapter = build_adapter(get_preset("custom"), config=config, base_url=base_url)
    assert isinstance(adapter, HttpAdapter)
    return adapter


def test_with_the_flag_off_it_refuses_the_fake_on_127_0_0_1(fake_provider: FakeProvider) -> None:
    adapter = guarded(
        fake_provider, fake_provider.base_url("custom"), allow_private_endpoints=False
    )
    with pytest.raises(InvalidEndpoint):
        acollect(adapter)
    assert fake_provider.requests == []


def test_a_name_that_resolves_to_loopback_at_connect_time_is_refused(
    fake_provider: FakeProvider,
) -> None:
    # The URL looks public and is https, so only the connect-time check can catch it.
    base_url = f"https://sneaky.example:{fake_provider.port}"
    adapter = guarded(
        fake_provider, base_url, allow_private_endpoints=False, answers=[["127.0.0.1"]]
    )
    with pytest.raises(BlockedEndpoint):
        acollect(adapter)
    assert fake_provider.requests == []


def test_a_rebinding_answer_at_connect_time_is_refused(fake_provider: FakeProvider) -> None:
    # The check when the key was saved saw loopback (allowed in development); the
    # connection's own lookup sees the metadata service.
    base_url = f"http://rebind.test:{fake_provider.port}/v1"
    adapter = guarded(fake_provider, base_url, answers=[["127.0.0.1"], ["169.254.169.254"]])
    check_endpoint(base_url, allow_private_endpoints=True, resolver=adapter.config.resolver)
    with pytest.raises(BlockedEndpoint):
        acollect(adapter)
    assert fake_provider.requests == []


def test_plain_http_never_reaches_a_public_address(fake_provider: FakeProvider) -> None:
    # Checked when the key was saved it was loopback; at connect time the name is public:
    # over plain http the key would cross the internet in clear, so nothing is opened.
    base_url = f"http://turns-public.test:{fake_provider.port}/v1"
    adapter = guarded(fake_provider, base_url, answers=[["127.0.0.1"], ["93.184.216.34"]])
    check_endpoint(base_url, allow_private_endpoints=True, resolver=adapter.config.resolver)
    with pytest.raises(InvalidEndpoint, match="https"):
        acollect(adapter)
    assert fake_provider.requests == []


def test_tls_goes_to_the_vetted_ip_with_certificate_checks_for_the_host_name(
    pki: Pki, tls_fake: FakeProvider
) -> None:
    named = build_adapter(
        get_preset("custom"),
        config=tls_config(pki),
        base_url=f"https://api.provider.test:{tls_fake.port}/v1",
    )
    result = acollect(named)
    assert result.error is None and result.text
    assert tls_fake.requests[0].headers["host"] == f"api.provider.test:{tls_fake.port}"

    bare_ip = build_adapter(
        get_preset("custom"),
        config=tls_config(pki),
        base_url=f"https://127.0.0.1:{tls_fake.port}/v1",
    )
    result = acollect(bare_ip)
    assert result.error is not None and result.error.kind is ProviderErrorKind.NETWORK
    assert len(tls_fake.requests) == 1, "the certificate is for the name, not the address"
