"""The Anthropic Messages adapter: what it sends, and what it reads back."""

from __future__ import annotations

import pytest

from providers import (
    ChatMessage,
    ChatRequest,
    ModelInfo,
    ProviderError,
    ProviderErrorKind,
    Role,
    Usage,
)
from providers.anthropic_messages import ANTHROPIC_VERSION
from tests.fakes.helpers import fake_adapter, stream
from tests.fakes.provider import FakeProvider

pytest_plugins = ["tests.fakes.fixtures"]

KEY = "sk-ant-api03-test-key-0002"


def conversation(**overrides: object) -> ChatRequest:
    fields: dict[str, object] = {
        "model": "claude-test",
        "messages": [
            ChatMessage(Role.USER, "Hello"),
            ChatMessage(Role.ASSISTANT, "Hi!"),
            ChatMessage(Role.USER, "Tell me a joke."),
        ],
        "api_key": KEY,
        "system_prompt": "You are funny.",
        "max_tokens": 512,
        "temperature": 0.7,
    }
    fields.update(overrides)
    return ChatRequest(**fields)  # type: ignore[arg-type]


def test_it_sends_the_key_in_x_api_key_and_the_system_prompt_as_its_own_field(
    fake_provider: FakeProvider,
) -> None:
    stream(fake_adapter(fake_provider, "anthropic"), conversation())

    [sent] = fake_provider.requests
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert "authorization" not in sent.headers
    assert sent.body == {
        "model": "claude-test",
        "max_tokens": 512,
        "system": "You are funny.",
        "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Tell me a joke."},
        ],
        "stream": True,
        "temperature": 0.7,
    }


def test_it_leaves_out_an_empty_system_prompt(fake_provider: FakeProvider) -> None:
    stream(fake_adapter(fake_provider, "anthropic"), conversation(system_prompt=""))
    [sent] = fake_provider.requests
    assert "system" not in sent.body


def test_it_counts_cache_reads_and_writes_as_part_of_the_input(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        text="Why did the chicken",
        usage={
            "input_tokens": 3000,
            "cached_tokens": 2048,
            "cache_write_tokens": 900,
            "output_tokens": 4,
        },
    )

    result = stream(fake_adapter(fake_provider, "anthropic"), conversation())

    assert result.usage == Usage(
        input_tokens=3000, output_tokens=4, cached_input_tokens=2048, cache_write_input_tokens=900
    )


def test_it_verifies_a_key_with_the_models_endpoint(fake_provider: FakeProvider) -> None:
    fake_adapter(fake_provider, "anthropic").verify(KEY)
    [sent] = fake_provider.requests
    assert (sent.method, sent.path, sent.headers["x-api-key"]) == ("GET", "/v1/models", KEY)


def test_it_fails_verification_for_a_rejected_key(fake_provider: FakeProvider) -> None:
    fake_provider.accept_only_keys("sk-ant-right")
    with pytest.raises(ProviderError) as caught:
        fake_adapter(fake_provider, "anthropic").verify(KEY)
    assert caught.value.kind is ProviderErrorKind.INVALID_KEY


def test_it_lists_models_with_their_display_names(fake_provider: FakeProvider) -> None:
    fake_provider.models["anthropic"] = ["claude-big-1", "claude-small-1"]

    models = fake_adapter(fake_provider, "anthropic").list_models(KEY)

    assert models == [
        ModelInfo("claude-big-1", "Claude Big 1"),
        ModelInfo("claude-small-1", "Claude Small 1"),
    ]


def test_it_ignores_pings_and_unknown_event_types(fake_provider: FakeProvider) -> None:
    # The fake always sends a ping; a future event type must not break old clients either.
    fake_provider.script(text="still fine")
    result = stream(fake_adapter(fake_provider, "anthropic"), conversation())
    assert result.text == "still fine"
    assert result.error is None


def test_it_maps_a_spend_limit_rate_limit_to_no_credit(fake_provider: FakeProvider) -> None:
    fake_provider.script(
        status=429,
        error_body={
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": "You have reached your specified API usage limits.",
                "details": {"error_code": "enforced_spend_limit_reached"},
            },
        },
    )
    result = stream(fake_adapter(fake_provider, "anthropic"), conversation())
    assert result.error is not None
    assert result.error.kind is ProviderErrorKind.NO_CREDIT
