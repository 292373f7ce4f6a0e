"""Every vendor error body, over real HTTP, lands in the one taxonomy — without the key."""

from __future__ import annotations

import socket

import pytest

from providers import (
    ChatMessage,
    ChatRequest,
    ProviderError,
    ProviderErrorKind,
    Role,
    build_adapter,
    get_preset,
)
from providers.errors import parse_retry_after
from tests.fakes.helpers import FAKE_CONFIG, fake_adapter, stream
from tests.fakes.provider import FakeProvider

pytest_plugins = ["tests.fakes.fixtures"]

KEY = "sk-test-errors-0123456789"
K = ProviderErrorKind


def chat_request(model: str = "fake-model") -> ChatRequest:
    return ChatRequest(model=model, messages=[ChatMessage(Role.USER, "hi")], api_key=KEY)


def stream_error(fake: FakeProvider, preset: str, model: str = "fake-model") -> ProviderError:
    result = stream(fake_adapter(fake, preset), chat_request(model))
    assert result.deltas == []
    assert result.error is not None
    return result.error


ERROR_TABLE = [
    # (preset, fake error name, expected kind, expected HTTP status)
    ("openai", "invalid_key", K.INVALID_KEY, 401),
    ("openai", "permission_denied", K.INVALID_KEY, 403),
    ("openai", "no_credit", K.NO_CREDIT, 429),
    ("openrouter", "payment_required", K.NO_CREDIT, 402),
    ("openai", "rate_limited", K.RATE_LIMITED, 429),
    ("openai", "overloaded", K.UNAVAILABLE, 503),
    ("openai", "server_error", K.UNAVAILABLE, 500),
    ("openai", "bad_gateway", K.UNAVAILABLE, 502),
    ("openai", "gateway_timeout", K.UNAVAILABLE, 504),
    ("openai", "context_too_long", K.CONTEXT_TOO_LONG, 400),
    ("openai", "model_not_found", K.BAD_REQUEST, 404),
    ("openai", "bad_request", K.BAD_REQUEST, 400),
    ("anthropic", "invalid_key", K.INVALID_KEY, 401),
    ("anthropic", "permission_denied", K.INVALID_KEY, 403),
    ("anthropic", "no_credit", K.NO_CREDIT, 400),
    ("anthropic", "payment_required", K.NO_CREDIT, 402),
    ("anthropic", "rate_limited", K.RATE_LIMITED, 429),
    ("anthropic", "overloaded", K.UNAVAILABLE, 529),
    ("anthropic", "server_error", K.UNAVAILABLE, 500),
    ("anthropic", "bad_gateway", K.UNAVAILABLE, 502),
    ("anthropic", "gateway_timeout", K.UNAVAILABLE, 504),
    ("anthropic", "context_too_long", K.CONTEXT_TOO_LONG, 400),
    ("anthropic", "model_not_found", K.BAD_REQUEST, 404),
    ("anthropic", "bad_request", K.BAD_REQUEST, 400),
    ("gemini", "invalid_key", K.INVALID_KEY, None),
    ("gemini", "permission_denied", K.INVALID_KEY, 403),
    ("gemini", "rate_limited", K.RATE_LIMITED, 429),
    ("gemini", "overloaded", K.UNAVAILABLE, 503),
    ("gemini", "server_error", K.UNAVAILABLE, 500),
    ("gemini", "bad_gateway", K.UNAVAILABLE, 502),
    ("gemini", "gateway_timeout", K.UNAVAILABLE, 504),
    ("gemini", "context_too_long", K.CONTEXT_TOO_LONG, 400),
    ("gemini", "model_not_found", K.BAD_REQUEST, 404),
    ("gemini", "bad_request", K.BAD_REQUEST, 400),
]


@pytest.mark.parametrize(("preset", "error_name", "kind", "status"), ERROR_TABLE)
def test_it_maps_each_vendor_error_to_its_kind(
    fake_provider: FakeProvider,
    preset: str,
    error_name: str,
    kind: ProviderErrorKind,
    status: int | None,
) -> None:
    fake_provider.script(error=error_name)

    error = stream_error(fake_provider, preset)

    assert error.kind is kind
    if status is not None:
        assert error.status == status
    assert error.retryable is (kind in {K.RATE_LIMITED, K.UNAVAILABLE, K.TIMEOUT, K.NETWORK})
    assert error.user_message
    assert KEY not in str(error)


def test_it_maps_anthropic_529_to_unavailable_and_retryable(fake_provider: FakeProvider) -> None:
    fake_provider.script(error="overloaded")
    error = stream_error(fake_provider, "anthropic")
    assert (error.kind, error.status, error.retryable) == (K.UNAVAILABLE, 529, True)


def test_it_maps_openai_insufficient_quota_429_to_no_credit_not_rate_limited(
    fake_provider: FakeProvider,
) -> None:
    fake_provider.script(error="no_credit")
    error = stream_error(fake_provider, "openai")
    assert error.kind is K.NO_CREDIT
    assert not error.retryable


def test_it_maps_gemini_api_key_invalid_400_to_invalid_key(fake_provider: FakeProvider) -> None:
    fake_provider.script(error="invalid_key")
    assert stream_error(fake_provider, "gemini").kind is K.INVALID_KEY


@pytest.mark.parametrize("preset", ["openai", "anthropic"])
def test_it_carries_the_retry_after_header_on_rate_limits(
    fake_provider: FakeProvider, preset: str
) -> None:
    fake_provider.script(error="rate_limited", retry_after=3)
    assert stream_error(fake_provider, preset).retry_after == 3.0


def test_it_reads_gemini_retry_info_when_there_is_no_header(fake_provider: FakeProvider) -> None:
    fake_provider.script(error="rate_limited")
    assert stream_error(fake_provider, "gemini").retry_after == 7.0


def test_it_reads_retry_after_ms_and_http_dates() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0


@pytest.mark.parametrize("preset", ["openai", "anthropic", "gemini"])
def test_it_reports_an_unknown_model_with_the_providers_own_message(
    fake_provider: FakeProvider, preset: str
) -> None:
    fake_provider.script(error="model_not_found")

    error = stream_error(fake_provider, preset, model="no-such-model-9")

    assert error.kind is K.BAD_REQUEST
    assert error.provider_message is not None
    assert "no-such-model-9" in error.provider_message
    # The kind's own words; the surfaces quote the provider's after them, once.
    assert "no-such-model-9" not in error.user_message


@pytest.mark.parametrize("preset", ["openai", "anthropic", "gemini"])
def test_it_never_repeats_the_key_a_provider_echoes_back(
    fake_provider: FakeProvider, preset: str
) -> None:
    fake_provider.script(error="bad_request", error_message=f"Your key {KEY} is not allowed here")

    error = stream_error(fake_provider, preset)

    for text in (str(error), repr(error), error.user_message, error.provider_message or ""):
        assert KEY not in text
    assert "[redacted]" in (error.provider_message or "")


@pytest.mark.parametrize("status", [400, 418, 422])
def test_it_maps_other_4xx_statuses_to_bad_request(
    fake_provider: FakeProvider, status: int
) -> None:
    fake_provider.script(status=status)
    assert stream_error(fake_provider, "openai").kind is K.BAD_REQUEST


@pytest.mark.parametrize(("status", "kind"), [(408, K.TIMEOUT), (413, K.CONTEXT_TOO_LONG)])
def test_it_maps_timeout_and_too_large_statuses(
    fake_provider: FakeProvider, status: int, kind: ProviderErrorKind
) -> None:
    fake_provider.script(status=status)
    assert stream_error(fake_provider, "anthropic").kind is kind


def test_it_maps_an_error_body_that_is_not_json_by_status(fake_provider: FakeProvider) -> None:
    fake_provider.script(status=503, error_body="<html>upstream connect error</html>")
    assert stream_error(fake_provider, "openai").kind is K.UNAVAILABLE


def test_it_does_not_follow_redirects(fake_provider: FakeProvider) -> None:
    fake_provider.script(redirect_to="http://169.254.169.254/latest/meta-data/")

    error = stream_error(fake_provider, "openai")

    assert error.kind is K.BAD_RESPONSE
    assert len(fake_provider.requests) == 1


def test_it_classifies_a_json_error_sent_with_status_200(fake_provider: FakeProvider) -> None:
    # Some OpenAI-compatible servers answer a streaming request's failure with 200 and JSON.
    fake_provider.script(
        status=200, error_body={"error": {"message": "model is loading", "type": "server_error"}}
    )
    error = stream_error(fake_provider, "openai")
    assert error.kind is K.UNAVAILABLE
    assert error.provider_message == "model is loading"


def test_it_maps_a_refused_connection_to_network() -> None:
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = build_adapter(
        get_preset("openai"), config=FAKE_CONFIG, base_url=f"http://127.0.0.1:{port}/v1"
    )

    result = stream(adapter, chat_request())

    assert result.error is not None
    assert result.error.kind is K.NETWORK
    assert result.error.retryable


def test_a_provider_error_knows_if_it_is_retryable() -> None:
    assert ProviderError(K.RATE_LIMITED).retryable
    assert ProviderError(K.UNAVAILABLE).retryable
    assert ProviderError(K.TIMEOUT).retryable
    assert ProviderError(K.NETWORK).retryable
    assert not ProviderError(K.INVALID_KEY).retryable
    assert not ProviderError(K.NO_CREDIT).retryable
    assert not ProviderError(K.CONTEXT_TOO_LONG).retryable
    assert not ProviderError(K.BAD_REQUEST).retryable
    assert not ProviderError(K.BAD_RESPONSE).retryable
