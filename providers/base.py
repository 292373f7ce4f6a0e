"""What the wire-protocol adapters share: endpoint checks, auth hygiene, the request and the
reading of its reply.

Each adapter supplies its auth headers, its requests and its vendor's error classification;
sending, deadlines and bounded reads are `providers.aio`'s (the one HTTP client), and
decoding a reply's events is the protocol's `ReplyParser`.
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from providers import aio
from providers import loop as relay
from providers.connections import ConnectionConfig
from providers.errors import ProviderError, ProviderErrorKind, parse_retry_after
from providers.netguard import canonical_base_url, check_endpoint
from providers.reasoning import Generation, generation_for
from providers.sse import ServerSentEvent
from providers.types import ChatEvent, ChatRequest

MAX_API_KEY_LENGTH = 1024

JSONObject = dict[str, Any]


def check_api_key_format(api_key: str) -> None:
    """Refuse a key that cannot be a header value, before it gets anywhere near the wire.

    An empty key is allowed (no auth header is sent: local servers need none). The message
    never includes the key.
    """
    if not isinstance(api_key, str):
        raise ProviderError(ProviderErrorKind.INVALID_KEY, "The API key is missing.")
    if len(api_key) > MAX_API_KEY_LENGTH or any(not 0x21 <= ord(ch) <= 0x7E for ch in api_key):
        raise ProviderError(
            ProviderErrorKind.INVALID_KEY,
            "The API key contains spaces, line breaks or unusual characters; paste it again.",
        )


def request_generation(protocol: str, request: ChatRequest) -> Generation:
    """What `request` sends over `protocol`: its limit, temperature and reasoning effort as
    `providers.reasoning` applies them to its model."""
    return generation_for(
        protocol,
        request.model,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        effort=request.reasoning_effort,
    )


def json_object(text: str | bytes) -> JSONObject:
    """Parse a JSON object, or raise a `bad_response` ProviderError (never a crash)."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ProviderError(
            ProviderErrorKind.BAD_RESPONSE,
            "The provider sent data that could not be read (malformed JSON).",
        ) from None
    if not isinstance(value, dict):
        raise ProviderError(
            ProviderErrorKind.BAD_RESPONSE, "The provider sent data of an unexpected shape."
        )
    return value


def as_int(value: object) -> int:
    """A token count from a JSON value; anything that is not a non-negative int counts 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def as_dict(value: object) -> JSONObject:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def retry_after_from_headers(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI) or the standard `retry-after`."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


class ReplyParser(ABC):
    """Turns one reply's server-sent events into chat events, one event at a time.

    No I/O: `HttpAdapter.astream_chat` feeds it the events as they arrive (and tests can
    feed it events of their own). `complete` turns true when the protocol's end-of-reply
    marker arrives; nothing after it is read as reply.
    """

    complete: bool = False

    @abstractmethod
    def feed(self, event: ServerSentEvent) -> list[ChatEvent]:
        """The chat events `event` carries. Raises `ProviderError` for an in-stream error."""

    @abstractmethod
    def end(self) -> list[ChatEvent]:
        """What follows the last text (`Usage`, `Finish`) once the stream has ended; raises
        `network` when the reply was cut off before the protocol said it was finished."""


@dataclass(frozen=True, slots=True)
class StreamCall:
    """One streaming request of a protocol: where it goes, what it sends, how to read it."""

    path: str
    body: JSONObject
    parser: ReplyParser
    params: Mapping[str, str] | None = None


class HttpAdapter(ABC):
    """Base of the protocol adapters: one canonical base URL, one connection config."""

    def __init__(self, *, base_url: str, config: ConnectionConfig) -> None:
        self.base_url = canonical_base_url(base_url)
        self.config = config

    # -- what each protocol defines ----------------------------------------------------------

    @abstractmethod
    def _auth_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry `api_key` (and any version header the protocol requires)."""

    @abstractmethod
    def _error_from_payload(
        self,
        *,
        status: int | None,
        payload: JSONObject | None,
        retry_after: float | None,
        api_key: str,
    ) -> ProviderError:
        """Classify an error: an HTTP error response, or (status None) an in-stream error."""

    @abstractmethod
    def _chat_call(self, request: ChatRequest) -> StreamCall:
        """The streaming request for `request`, with a fresh parser for its reply."""

    # -- streaming a reply -----------------------------------------------------------------------

    async def astream_chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        """Stream one reply, on an asyncio event loop (the worker's relay loop):
        `TextDelta`s, then `Usage` (when reported), then `Finish`.

        The request is sent when iteration starts. Raises `ProviderError` (or
        `InvalidChatRequest` / `InvalidEndpoint` before anything is sent); a stream that
        breaks off raises after the deltas that arrived. Cancelling the task ends the
        provider call.
        """
        call = self._chat_call(request)
        parser = call.parser
        async with aio.event_stream(
            self,
            url=self._url(call.path),
            headers=self._headers(request.api_key, streaming=True),
            body=call.body,
            params=call.params,
            api_key=request.api_key,
        ) as stream:
            async with contextlib.aclosing(stream.events()) as events:
                async for event in events:
                    for chat_event in parser.feed(event):
                        yield chat_event
                    if parser.complete:
                        stream.finished()
                        break
            for chat_event in parser.end():
                yield chat_event

    # -- plumbing ------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        # Checked on every call, not only when the key was saved: the policy may have changed
        # since, and the guard's connect-time check covers what the URL itself cannot show.
        check_endpoint(self.base_url, allow_private_endpoints=self.config.allow_private_endpoints)
        return self.base_url + path

    def _headers(self, api_key: str, *, streaming: bool) -> dict[str, str]:
        check_api_key_format(api_key)
        headers = self._auth_headers(api_key)
        headers["accept"] = "text/event-stream" if streaming else "application/json"
        return headers

    def _get_json(
        self, path: str, *, api_key: str, params: Mapping[str, str] | None = None
    ) -> JSONObject:
        """GET a JSON object on the relay loop and wait for it (a key check, a model list),
        every failure a `ProviderError`."""
        url = self._url(path)
        headers = self._headers(api_key, streaming=False)
        body = relay.call(
            aio.get_body(self, url=url, headers=headers, params=params, api_key=api_key)
        )
        return json_object(body)

    def error_from_status(
        self, status: int, headers: Mapping[str, str], raw: bytes, api_key: str
    ) -> ProviderError:
        """Classify a non-200 answer from its status, headers and (bounded) body."""
        payload: JSONObject | None
        try:
            payload = json_object(raw) if raw else None
        except ProviderError:
            payload = None
        return self._error_from_payload(
            status=status,
            payload=payload,
            retry_after=retry_after_from_headers(headers),
            api_key=api_key,
        )

    def error_from_unstreamed_body(self, raw: bytes, api_key: str) -> ProviderError:
        """A 200 answer with a JSON body where a stream was expected: some OpenAI-compatible
        servers answer an error that way."""
        payload = json_object(raw)
        if "error" in payload:
            return self._error_from_payload(
                status=None, payload=payload, retry_after=None, api_key=api_key
            )
        return ProviderError(
            ProviderErrorKind.BAD_RESPONSE, "The provider answered without streaming the reply."
        )
