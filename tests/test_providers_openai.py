"""The OpenAI Chat Completions adapter: what it sends, and what it reads back."""

from __future__ import annotations

import pytest

from providers import (
    ChatMessage,
    ChatRequest,
    ModelInfo,
    ProviderErrorKind,
    Role,
    Usage,
)
from tests.fakes.helpers import fake_adapter, stream
from tests.fakes.provider import FakeProvider

pytest_plugins = ["tests.fakes.fixtures"]

KEY = "sk-test-openai-key-0001"


def conversation(**overrides: object) -> ChatRequest:
    fields: dict[str, object] = {
        "model": "gpt-test",
        "messages": [
            ChatMessage(Role.USER, "What is 2+2?"),
            ChatMessage(Role.ASSISTANT, "4."),
            ChatMessage(Role.USER, "And 3+3?"),
        ],
        "api_key": KEY,
        "system_prompt": "You are terse.",
        "max_tokens": 300,
        "temperature": 0.2,
    }
    fields.update(overrides)
    return ChatRequest(**fields)  # type: ignore[arg-type]


def test_it_sends_a_streaming_chat_completion_with_bearer_auth(fake_provider: FakeProvider) -> None:
    stream(fake_adapter(fake_provider, "openai"), conversation())

    [sent] = fake_provider.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 300,
        "temperature": 0.2,
    }


def test_it_sends_max_tokens_and_no_temperature_to_compatible_servers(
    fake_provider: FakeProvider,
) -> None:
    stream(fake_adapter(fake_provider, "groq"), conversation(temperature=None))

    [sent] = fake_provider.requests
    assert sent.path == "/openai/v1/chat/completions"
    assert sent.body["max_tokens"] == 300
    assert "max_completion_tokens" not in sent.body
    assert "temperature" not in sent.body


def test_it_leaves_out_stream_options_for_mistral(fake_provider: FakeProvider) -> None:
    stream(fake_adapter(fake_provider, "mistral"), conversation())
    [sent] = fake_provider.requests
    assert "stream_options" not in sent.body


def test_it_sends_no_authorization_header_without_a_key(fake_provider: FakeProvider) -> None:
    stream(fake_adapter(fake_provider, "ollama"), conversation(api_key=""))
    [sent] = fake_provider.requests
    assert "authorization" not in sent.headers


def test_it_reports_cached_and_reasoning_tokens(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        text="six",
        usage={
            "input_tokens": 2000,
            "cached_tokens": 1536,
            "output_tokens": 90,
            "reasoning_tokens": 64,
        },
    )

    result = stream(fake_adapter(fake_provider, "openai"), conversation())

    assert result.usage == Usage(
        input_tokens=2000, output_tokens=90, cached_input_tokens=1536, reasoning_tokens=64
    )


def test_it_verifies_a_key_by_listing_models(fake_provider: FakeProvider) -> None:
    fake_adapter(fake_provider, "openai").verify(KEY)

    [sent] = fake_provider.requests
    assert (sent.method, sent.path, sent.api_key) == ("GET", "/v1/models", KEY)


def test_it_fails_verification_for_a_key_the_provider_rejects(fake_provider: FakeProvider) -> None:
    fake_provider.accept_only_keys("sk-the-right-one")

    with pytest.raises(Exception) as caught:
        fake_adapter(fake_provider, "openai").verify(KEY)

    assert getattr(caught.value, "kind", None) is ProviderErrorKind.INVALID_KEY
    assert KEY not in str(caught.value)


def test_it_lists_models_sorted_by_id(fake_provider: FakeProvider) -> None:
    fake_provider.models["openai"] = ["zeta-1", "alpha-2", "mid-3"]

    models = fake_adapter(fake_provider, "openai").list_models(KEY)

    assert models == [ModelInfo("alpha-2"), ModelInfo("mid-3"), ModelInfo("zeta-1")]


@pytest.mark.parametrize(
    ("preset", "style"),
    [("mistral", "finish_chunk"), ("groq", "x_groq"), ("deepseek", "deepseek")],
)
def test_it_reads_usage_wherever_compatible_servers_put_it(
    fake_provider: FakeProvider, preset: str, style: str
) -> None:
    fake_provider.script(
        text="x",
        openai_usage_style=style,
        usage={"input_tokens": 50, "cached_tokens": 32, "output_tokens": 7},
    )

    result = stream(fake_adapter(fake_provider, preset), conversation())

    assert result.usage == Usage(input_tokens=50, output_tokens=7, cached_input_tokens=32)


def test_it_raises_network_when_a_stream_ends_without_done_or_finish_reason(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(text="a b c d", drop_after_tokens=4)
    result = stream(fake_adapter(fake_provider, "openai"), conversation())
    assert result.text == "a b c d"
    assert result.error is not None
    assert result.error.kind is ProviderErrorKind.NETWORK
