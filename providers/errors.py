"""One error taxonomy for every provider, and the validation errors raised before a call.

A `ProviderError` is what a call to a provider can end in; its `kind` decides what the caller
does (retry, mark the key invalid, tell the user to top up). Its `user_message` is short and
safe to show: it never holds the API key or request headers, and a provider's own message is
only carried (in `provider_message`) after the key has been scrubbed out of it.
"""

from __future__ import annotations

import email.utils
import math
import time
from enum import StrEnum

# Provider messages end up in the UI and in stored error text; keep them short.
_PROVIDER_MESSAGE_LIMIT = 300
_REDACTED = "[redacted]"


class ProviderErrorKind(StrEnum):
    INVALID_KEY = "invalid_key"
    NO_CREDIT = "no_credit"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    CONTEXT_TOO_LONG = "context_too_long"
    BAD_REQUEST = "bad_request"
    TIMEOUT = "timeout"
    NETWORK = "network"
    BAD_RESPONSE = "bad_response"


RETRYABLE_KINDS = frozenset(
    {
        ProviderErrorKind.RATE_LIMITED,
        ProviderErrorKind.UNAVAILABLE,
        ProviderErrorKind.TIMEOUT,
        ProviderErrorKind.NETWORK,
    }
)

_DEFAULT_MESSAGES: dict[ProviderErrorKind, str] = {
    ProviderErrorKind.INVALID_KEY: "The provider rejected this API key.",
    ProviderErrorKind.NO_CREDIT: "The provider account has no credit or quota left.",
    ProviderErrorKind.RATE_LIMITED: "The provider is rate limiting this key; try again shortly.",
    ProviderErrorKind.UNAVAILABLE: "The provider is unavailable or overloaded; try again shortly.",
    ProviderErrorKind.CONTEXT_TOO_LONG: "The conversation is too long for this model.",
    ProviderErrorKind.BAD_REQUEST: "The provider rejected the request.",
    ProviderErrorKind.TIMEOUT: "The provider took too long to answer.",
    ProviderErrorKind.NETWORK: "The connection to the provider failed.",
    ProviderErrorKind.BAD_RESPONSE: "The provider sent a response that could not be read.",
}


class ProviderError(Exception):
    """A failed provider call, classified.

    `user_message` is fit to show a user. `provider_message` is the provider's own wording
    (already scrubbed of the key, truncated) when it adds something, e.g. "model not found".
    `retry_after` is in seconds when the provider said how long to wait. `status` is the HTTP
    status, when there was one.
    """

    def __init__(
        self,
        kind: ProviderErrorKind,
        user_message: str | None = None,
        *,
        provider_message: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        self.kind = kind
        self.user_message = user_message or _DEFAULT_MESSAGES[kind]
        self.provider_message = provider_message
        self.retry_after = retry_after
        self.status = status
        super().__init__(self.user_message)

    @property
    def retryable(self) -> bool:
        """Whether trying the same call again later can succeed.

        A stream that failed after deltas were delivered may still be retryable by this
        definition; whether a retry is wanted (provider calls are at most once) is the
        caller's decision.
        """
        return self.kind in RETRYABLE_KINDS

    def __repr__(self) -> str:
        return (
            f"ProviderError(kind={self.kind.value!r}, user_message={self.user_message!r}, "
            f"status={self.status!r}, retry_after={self.retry_after!r})"
        )


def connection_dropped() -> ProviderError:
    """A stream that ended before the protocol said the reply was finished."""
    return ProviderError(
        ProviderErrorKind.NETWORK,
        "The connection to the provider dropped before the reply finished.",
    )


class InvalidEndpoint(ValueError):
    """A base URL that cannot be used: malformed, not http(s), or refused by the network guard.

    The message is user-readable (it names the problem, not internals).
    """

    @property
    def user_message(self) -> str:
        return str(self)


class InvalidChatRequest(ValueError):
    """A chat request that cannot be sent: no messages, absurd limits, an unusable model id."""

    @property
    def user_message(self) -> str:
        return str(self)


def redact_secret(text: str, secret: str | None) -> str:
    """Return `text` with every occurrence of `secret` replaced by a marker.

    Providers sometimes echo part of a bad key back; a whole key must never travel further.
    """
    if secret and len(secret) >= 4:
        text = text.replace(secret, _REDACTED)
    return text


def clean_provider_message(message: object, secret: str | None) -> str | None:
    """A provider's error message made safe to keep: a string, key scrubbed, truncated."""
    if not isinstance(message, str) or not message.strip():
        return None
    cleaned = " ".join(redact_secret(message, secret).split())
    if len(cleaned) > _PROVIDER_MESSAGE_LIMIT:
        cleaned = cleaned[: _PROVIDER_MESSAGE_LIMIT - 1] + "…"
    return cleaned


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment is None:
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def error_for_status(
    status: int,
    *,
    provider_message: str | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """The generic HTTP-status classification; adapters refine it with the vendor's body."""
    if status in (401, 403):
        message = (
            "The provider rejected this API key."
            if status == 401
            else "The provider refused this key permission for the request."
        )
        return ProviderError(ProviderErrorKind.INVALID_KEY, message, status=status)
    if status == 402:
        return ProviderError(
            ProviderErrorKind.NO_CREDIT, provider_message=provider_message, status=status
        )
    if status == 429:
        return ProviderError(
            ProviderErrorKind.RATE_LIMITED,
            provider_message=provider_message,
            retry_after=retry_after,
            status=status,
        )
    if status == 408:
        return ProviderError(ProviderErrorKind.TIMEOUT, status=status, retry_after=retry_after)
    if status == 413:
        return ProviderError(
            ProviderErrorKind.CONTEXT_TOO_LONG, provider_message=provider_message, status=status
        )
    if status >= 500:
        return ProviderError(
            ProviderErrorKind.UNAVAILABLE,
            provider_message=provider_message,
            retry_after=retry_after,
            status=status,
        )
    if 300 <= status < 400:
        return ProviderError(
            ProviderErrorKind.BAD_RESPONSE,
            "The provider answered with a redirect; use the final URL as the base URL.",
            status=status,
        )
    if status >= 400:
        return bad_request(provider_message, status=status)
    return ProviderError(ProviderErrorKind.BAD_RESPONSE, status=status)


def bad_request(provider_message: str | None, *, status: int | None = None) -> ProviderError:
    """A `bad_request` carrying the provider's own explanation in `provider_message` (the
    surfaces quote it once, after the kind's own words)."""
    return ProviderError(
        ProviderErrorKind.BAD_REQUEST, provider_message=provider_message, status=status
    )


_CONTEXT_HINTS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "prompt is too long",
    "too many tokens",
    "maximum number of tokens",
    "input token count",
    "reduce the length",
)
# Not "exceeded your current quota": Gemini says that for plain per-minute rate limits too.
_CREDIT_HINTS = (
    "insufficient_quota",
    "insufficient balance",
    "insufficient credits",
    "credit balance",
    "spend limit",
)


def looks_like_context_overflow(*texts: str | None) -> bool:
    """Whether a provider's error code or message says the input is too long."""
    return _mentions(texts, _CONTEXT_HINTS)


def looks_like_no_credit(*texts: str | None) -> bool:
    """Whether a provider's error code or message says the account is out of money."""
    return _mentions(texts, _CREDIT_HINTS)


def _mentions(texts: tuple[str | None, ...], hints: tuple[str, ...]) -> bool:
    lowered = " ".join(text.lower() for text in texts if text)
    return any(hint in lowered for hint in hints)
