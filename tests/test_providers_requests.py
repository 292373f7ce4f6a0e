"""Chat requests are validated on construction and never show their key."""

from __future__ import annotations

import math

import pytest

from providers import (
    ChatMessage,
    ChatRequest,
    InvalidChatRequest,
    ProviderError,
    ProviderErrorKind,
    Role,
)
from tests.fakes.helpers import fake_adapter, stream_events
from tests.fakes.provider import FakeProvider

pytest_plugins = ["tests.fakes.fixtures"]

KEY = "sk-live-very-secret-0005"
HELLO = [ChatMessage(Role.USER, "hello")]


def make(**overrides: object) -> ChatRequest:
    fields: dict[str, object] = {"model": "m", "messages": HELLO, "api_key": KEY}
    fields.update(overrides)
    return ChatRequest(**fields)  # type: ignore[arg-type]


def test_it_never_shows_the_key_in_a_requests_repr() -> None:
    request = make()
    assert KEY not in repr(request)
    assert KEY not in str(request)
    assert request.api_key == KEY


def test_it_refuses_an_empty_message_list() -> None:
    with pytest.raises(InvalidChatRequest, match="no messages"):
        make(messages=[])


@pytest.mark.parametrize("max_tokens", [0, -1, 10**9, True, 1.5])
def test_it_refuses_an_absurd_max_tokens(max_tokens: object) -> None:
    with pytest.raises(InvalidChatRequest, match="reply length"):
        make(max_tokens=max_tokens)


@pytest.mark.parametrize("temperature", [-0.1, 2.5, math.nan, True])
def test_it_refuses_a_temperature_out_of_range(temperature: object) -> None:
    with pytest.raises(InvalidChatRequest, match="temperature"):
        make(temperature=temperature)


@pytest.mark.parametrize("model", ["", "   ", "gpt 4", "x" * 300])
def test_it_refuses_an_unusable_model_id(model: str) -> None:
    with pytest.raises(InvalidChatRequest):
        make(model=model)


def test_it_refuses_an_empty_message_and_an_unknown_role() -> None:
    with pytest.raises(InvalidChatRequest, match="empty"):
        make(messages=[ChatMessage(Role.USER, "")])
    with pytest.raises(InvalidChatRequest, match="role"):
        make(messages=[ChatMessage("system", "hi")])  # type: ignore[arg-type]


def test_it_accepts_roles_given_as_plain_strings() -> None:
    request = make(messages=[ChatMessage("user", "hi")])  # type: ignore[arg-type]
    assert request.messages[0].role is Role.USER


def test_it_strips_whitespace_around_the_model_id() -> None:
    assert make(model="  gpt-test ").model == "gpt-test"


@pytest.mark.parametrize("bad_key", ["sk-abc\r\nX-Evil: 1", "sk abc", "sk-ключ", "k" * 2000])
def test_it_refuses_a_key_that_cannot_be_a_header_before_sending_anything(
    fake_provider: FakeProvider, bad_key: str
) -> None:
    adapter = fake_adapter(fake_provider, "openai")

    with pytest.raises(ProviderError) as caught:
        stream_events(adapter, make(api_key=bad_key))

    assert caught.value.kind is ProviderErrorKind.INVALID_KEY
    assert bad_key not in str(caught.value)
    assert fake_provider.requests == []
