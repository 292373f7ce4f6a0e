"""Streaming over real HTTP, for each wire protocol: text, usage, finish, and every way a
stream goes wrong after it started."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers import (
    ChatEvent,
    ChatMessage,
    ChatRequest,
    Finish,
    FinishReason,
    ProviderErrorKind,
    Role,
    TextDelta,
    Usage,
    aio,
)
from providers import loop as relay
from tests.fakes.helpers import FAKE_CONFIG, fake_adapter, stream, stream_events
from tests.fakes.provider import DEFAULT_REPLY, FakeProvider

pytest_plugins = ["tests.fakes.fixtures"]

PROTOCOL_PRESETS = ["openai", "anthropic", "gemini"]
KEY = "sk-test-0123456789abcdef"


def chat_request(text: str = "Say hello", **overrides: object) -> ChatRequest:
    fields: dict[str, object] = {
        "model": "fake-model",
        "messages": [ChatMessage(Role.USER, text)],
        "api_key": KEY,
        "system_prompt": "Be brief.",
        "max_tokens": 256,
    }
    fields.update(overrides)
    return ChatRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
def test_it_streams_the_reply_text_then_usage_then_finish(
    fake_provider: FakeProvider, preset: str
) -> None:
    fake_provider.script(text="Bonjour, ça va? 日本語 🎉", usage={"input_tokens": 21})

    events = stream_events(fake_adapter(fake_provider, preset), chat_request())

    deltas = [event for event in events if isinstance(event, TextDelta)]
    assert "".join(d.text for d in deltas) == "Bonjour, ça va? 日本語 🎉"
    assert len(deltas) > 1, "the reply should arrive in several deltas, not at the end"
    *_, usage, finish = events
    assert isinstance(usage, Usage)
    assert (usage.input_tokens, usage.output_tokens) == (21, len(deltas))
    assert isinstance(finish, Finish)
    assert finish.reason is FinishReason.STOP


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
def test_it_answers_with_the_default_text_when_nothing_is_scripted(
    fake_provider: FakeProvider, preset: str
) -> None:
    result = stream(fake_adapter(fake_provider, preset), chat_request())
    assert result.text == DEFAULT_REPLY
    assert result.error is None


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
def test_it_raises_network_after_the_deltas_it_got_when_the_connection_drops(
    fake_provider: FakeProvider, preset: str
) -> None:
    fake_provider.script(text="one two three four five six", drop_after_tokens=3)

    result = stream(fake_adapter(fake_provider, preset), chat_request())

    assert result.text == "one two three "
    assert result.error is not None
    assert result.error.kind is ProviderErrorKind.NETWORK
    assert result.error.retryable
    assert result.finish is None


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
def test_it_raises_network_when_the_connection_drops_before_any_token(
    fake_provider: FakeProvider, preset: str
) -> None:
    fake_provider.script(drop_after_tokens=0)
    result = stream(fake_adapter(fake_provider, preset), chat_request())
    assert result.deltas == []
    assert result.error is not None
    assert result.error.kind is ProviderErrorKind.NETWORK


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
def test_it_maps_bad_json_in_the_stream_to_bad_response_after_the_deltas(
    fake_provider: FakeProvider, preset: str
) -> None:
    fake_provider.script(text="alpha beta gamma", malformed_after_tokens=2)

    result = stream(fake_adapter(fake_provider, preset), chat_request())

    assert result.text == "alpha beta "
    assert result.error is not None
    assert result.error.kind is ProviderErrorKind.BAD_RESPONSE
    assert not result.error.retryable


@pytest.mark.parametrize(
    ("preset", "expected_kind"),
    [
        ("openai", ProviderErrorKind.UNAVAILABLE),
        ("anthropic", ProviderErrorKind.UNAVAILABLE),
        ("gemini", ProviderErrorKind.UNAVAILABLE),
    ],
)
def test_it_raises_an_error_event_mid_stream_after_the_deltas(
    fake_provider: FakeProvider, preset: str, expected_kind: ProviderErrorKind
) -> None:
    fake_provider.script(
        text="partial answer here", stream_error="overloaded", stream_error_after_tokens=2
    )

    result = stream(fake_adapter(fake_provider, preset), chat_request())

    assert result.text == "partial answer "
    assert result.error is not None
    assert result.error.kind is expected_kind
    assert result.error.retryable


def test_it_maps_a_mid_stream_rate_limit_event_to_rate_limited(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(text="a b c", stream_error="rate_limited", stream_error_after_tokens=1)
    result = stream(fake_adapter(fake_provider, "anthropic"), chat_request())
    assert result.text == "a "
    assert result.error is not None
    assert result.error.kind is ProviderErrorKind.RATE_LIMITED


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
def test_it_reads_streams_with_crlf_line_endings(fake_provider: FakeProvider, preset: str) -> None:
    fake_provider.script(text="carriage return line feed", line_ending="\r\n")
    result = stream(fake_adapter(fake_provider, preset), chat_request())
    assert result.text == "carriage return line feed"
    assert result.finish is not None


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=st.text(
        alphabet=st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=30
    ).filter(str.strip),
    chunk_bytes=st.integers(1, 64),
    line_ending=st.sampled_from(["\n", "\r\n"]),
)
def test_it_yields_the_same_reply_however_the_network_cuts_the_bytes(
    fake_provider: FakeProvider, preset: str, text: str, chunk_bytes: int, line_ending: str
) -> None:
    fake_provider.reset()
    fake_provider.script(text=text, chunk_bytes=chunk_bytes, line_ending=line_ending)

    result = stream(fake_adapter(fake_provider, preset), chat_request())

    assert result.error is None
    assert result.text == text
    assert result.usage is not None
    assert result.finish is not None


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
def test_it_times_out_when_the_first_token_takes_longer_than_the_read_timeout(
    fake_provider: FakeProvider, preset: str
) -> None:
    fake_provider.script(first_token_delay=0.6)
    config = dataclasses.replace(FAKE_CONFIG, read_timeout=0.2)

    result = stream(fake_adapter(fake_provider, preset, config=config), chat_request())

    assert result.error is not None
    assert result.error.kind is ProviderErrorKind.TIMEOUT
    assert result.error.retryable


def test_it_stops_a_slow_trickle_at_the_call_deadline_keeping_the_partial_text(
    fake_provider: FakeProvider,
) -> None:
    # Every token arrives well within the read timeout; only the overall deadline can stop
    # it: the reply takes ten seconds at the fake's pace, the deadline is two.
    words = ["word"] * 200
    fake_provider.script(text=" ".join(words), tokens_per_second=20)
    config = dataclasses.replace(FAKE_CONFIG, call_deadline=2.0)

    result = stream(fake_adapter(fake_provider, "openai", config=config), chat_request())

    assert result.error is not None
    assert result.error.kind is ProviderErrorKind.TIMEOUT
    assert len(result.deltas) < len(words)
    assert " ".join(words).startswith(result.text), "what arrived is kept, in order"


def test_it_streams_the_scripted_chunks(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        text=" ".join(["tok"] * 10),
        first_token_delay=0.1,
        tokens_per_second=100,
        tokens_per_chunk=2,
    )

    result = stream(fake_adapter(fake_provider, "anthropic"), chat_request())

    assert result.deltas == ["tok tok "] * 4 + ["tok tok"]
    assert result.finish is not None


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
def test_it_reuses_the_keep_alive_connection_across_calls(
    fake_provider: FakeProvider, preset: str
) -> None:
    adapter = fake_adapter(fake_provider, preset)
    stream(adapter, chat_request())
    adapter.verify(KEY)
    stream(adapter, chat_request())

    ports = {request.client_port for request in fake_provider.requests}
    assert len(ports) == 1


def test_it_stops_reading_when_the_caller_stops_iterating(fake_provider: FakeProvider) -> None:
    fake_provider.script(text=" ".join(["slow"] * 50), tokens_per_second=50)
    adapter = fake_adapter(fake_provider, "openai")

    async def first_then_stop() -> ChatEvent:
        events = adapter.astream_chat(chat_request())
        first = await anext(events)
        await events.aclose()  # a user stopped the turn
        return first

    assert isinstance(relay.call(first_then_stop()), TextDelta)
    assert aio.calls_in_flight() == 0, "the call ended with the iteration"
    # The next call still works (on a new connection: the cancelled one was discarded).
    assert stream(fake_adapter(fake_provider, "openai"), chat_request()).error is None


@pytest.mark.parametrize(
    ("preset", "provider_reason", "expected"),
    [
        ("openai", "length", FinishReason.LENGTH),
        ("openai", "content_filter", FinishReason.CONTENT_FILTER),
        ("anthropic", "max_tokens", FinishReason.LENGTH),
        ("anthropic", "refusal", FinishReason.CONTENT_FILTER),
        ("gemini", "MAX_TOKENS", FinishReason.LENGTH),
        ("gemini", "SAFETY", FinishReason.CONTENT_FILTER),
        ("gemini", "SOMETHING_NEW", FinishReason.OTHER),
    ],
)
def test_it_maps_each_vendors_finish_reason(
    fake_provider: FakeProvider, preset: str, provider_reason: str, expected: FinishReason
) -> None:
    fake_provider.script(finish_reason=provider_reason)
    result = stream(fake_adapter(fake_provider, preset), chat_request())
    assert result.finish is not None
    assert result.finish.reason is expected
    assert result.finish.provider_reason == provider_reason


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
def test_it_finishes_without_usage_when_the_provider_reports_none(
    fake_provider: FakeProvider, preset: str
) -> None:
    fake_provider.script(include_usage=False)
    result = stream(fake_adapter(fake_provider, preset), chat_request())
    assert result.error is None
    assert result.usage is None
    assert result.finish is not None


@pytest.mark.parametrize("preset", [*PROTOCOL_PRESETS, "deepseek"])
def test_it_leaves_reasoning_out_of_the_reply_text(
    fake_provider: FakeProvider, preset: str
) -> None:
    fake_provider.script(text="The answer is 4.", thinking="Let me add two and two...")
    result = stream(fake_adapter(fake_provider, preset), chat_request())
    assert result.text == "The answer is 4."
