"""The Gemini generateContent adapter: what it sends, and what it reads back."""

from __future__ import annotations

import pytest

from providers import (
    ChatMessage,
    ChatRequest,
    Finish,
    FinishReason,
    InvalidChatRequest,
    ModelInfo,
    ProviderError,
    ProviderErrorKind,
    Role,
    Usage,
)
from tests.fakes.helpers import fake_adapter, stream, stream_events
from tests.fakes.provider import FakeProvider

pytest_plugins = ["tests.fakes.fixtures"]

KEY = "AIzaSyTest-gemini-key-0003"


def conversation(**overrides: object) -> ChatRequest:
    fields: dict[str, object] = {
        "model": "gemini-test",
        "messages": [
            ChatMessage(Role.USER, "Hello"),
            ChatMessage(Role.ASSISTANT, "Hi!"),
            ChatMessage(Role.USER, "Name a colour."),
        ],
        "api_key": KEY,
        "system_prompt": "One word answers.",
        "max_tokens": 64,
        "temperature": 1.0,
    }
    fields.update(overrides)
    return ChatRequest(**fields)  # type: ignore[arg-type]


def test_it_sends_the_key_in_a_header_and_never_in_the_url(fake_provider: FakeProvider) -> None:
    stream(fake_adapter(fake_provider, "gemini"), conversation())

    [sent] = fake_provider.requests
    assert (sent.method, sent.path) == ("POST", "/v1beta/models/gemini-test:streamGenerateContent")
    assert sent.query == {"alt": "sse"}
    assert sent.headers["x-goog-api-key"] == KEY
    assert KEY not in sent.path and KEY not in str(sent.query)
    assert sent.body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hello"}]},
            {"role": "model", "parts": [{"text": "Hi!"}]},
            {"role": "user", "parts": [{"text": "Name a colour."}]},
        ],
        "systemInstruction": {"parts": [{"text": "One word answers."}]},
        "generationConfig": {"maxOutputTokens": 64, "temperature": 1.0},
    }


def test_it_accepts_model_ids_with_the_models_prefix(fake_provider: FakeProvider) -> None:
    stream(fake_adapter(fake_provider, "gemini"), conversation(model="models/g-1.5"))
    [sent] = fake_provider.requests
    assert sent.path == "/v1beta/models/g-1.5:streamGenerateContent"


@pytest.mark.parametrize("model", ["../files", "gemini?key=x", "a/b", "x:generateContent#"])
def test_it_refuses_a_model_id_that_would_change_the_url(
    fake_provider: FakeProvider, model: str
) -> None:
    with pytest.raises(InvalidChatRequest):
        stream_events(fake_adapter(fake_provider, "gemini"), conversation(model=model))
    assert fake_provider.requests == []


def test_it_counts_thinking_as_output_and_reports_cached_input(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(
        text="Blue.",
        usage={
            "input_tokens": 1200,
            "cached_tokens": 1024,
            "output_tokens": 150,
            "reasoning_tokens": 148,
        },
    )

    result = stream(fake_adapter(fake_provider, "gemini"), conversation())

    assert result.usage == Usage(
        input_tokens=1200, output_tokens=150, cached_input_tokens=1024, reasoning_tokens=148
    )


def test_it_verifies_a_key_by_listing_models(fake_provider: FakeProvider) -> None:
    fake_adapter(fake_provider, "gemini").verify(KEY)
    [sent] = fake_provider.requests
    assert (sent.method, sent.path, sent.headers["x-goog-api-key"]) == (
        "GET",
        "/v1beta/models",
        KEY,
    )


def test_it_fails_verification_for_a_rejected_key(fake_provider: FakeProvider) -> None:
    fake_provider.accept_only_keys("AIza-right")
    with pytest.raises(ProviderError) as caught:
        fake_adapter(fake_provider, "gemini").verify(KEY)
    assert caught.value.kind is ProviderErrorKind.INVALID_KEY


def test_it_lists_models_without_the_models_prefix(fake_provider: FakeProvider) -> None:
    fake_provider.models["gemini"] = ["gemini-a", "gemini-b"]
    assert fake_adapter(fake_provider, "gemini").list_models(KEY) == [
        ModelInfo("gemini-a", "Gemini A"),
        ModelInfo("gemini-b", "Gemini B"),
    ]


def test_it_finishes_with_content_filter_when_the_prompt_is_blocked(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(block_reason="SAFETY")

    result = stream(fake_adapter(fake_provider, "gemini"), conversation())

    assert result.error is None
    assert result.deltas == []
    assert result.finish == Finish(FinishReason.CONTENT_FILTER, "SAFETY")
