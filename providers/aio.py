"""The one HTTP client of provider calls: aiohttp, on an asyncio event loop, behind the
network guard.

A worker relays hundreds of replies at once. Reading each on a thread of its own costs a
thread wake-up and a hand-off of the interpreter lock per provider event (110 to 120 µs of CPU
per event at 100 streams, against about 45 µs here); one loop reading every stream does not.
Streams (`HttpAdapter.astream_chat`) run on the process's relay loop (`providers.loop`); the
few blocking calls (a key check, a model list: `HttpAdapter.verify`, `list_models`) are
handed to the same loop and waited for.

Every connection is resolved through `netguard.GuardedResolver` (the host resolved once per
connection through the configured resolver, every address allowed, the socket opened to the
vetted address, the name kept in the Host header and in TLS SNI and certificate checks, no
plain http to a public address); redirects are never followed, proxies and `.netrc` from the
environment are ignored, and no cookie is kept between calls. An IP-literal host is not
resolved (aiohttp connects to it as written): `HttpAdapter._url` has checked it, with the
same rules, just before (`check_endpoint`), and a literal cannot change in between. Every
failure becomes a `ProviderError` (`_translated`), raised `from None`: aiohttp's exceptions
carry the request, and with it the key header.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx

from providers import loop as loop_module
from providers.connections import ConnectionConfig
from providers.errors import InvalidEndpoint, ProviderError, ProviderErrorKind, connection_dropped
from providers.netguard import GuardedResolver
from providers.sse import ServerSentEvent, SSEDecoder, SSEProtocolError

if TYPE_CHECKING:
    from providers.base import HttpAdapter


os.register_at_fork(after_in_child=lambda: _sessions.clear())


# -- sessions: one per connection policy, on the loop that uses it ---------------------------

# (loop, config, public addresses allowed) -> session. Only the relay loop's thread touches
# it in production; tests running their own loops get their own sessions.
_sessions: dict[tuple[int, ConnectionConfig, bool], aiohttp.ClientSession] = {}


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """certifi's trust store (as httpx builds it), not the environment's; loaded once."""
    return httpx.create_ssl_context(trust_env=False)


def session_for(config: ConnectionConfig, *, public_allowed: bool) -> aiohttp.ClientSession:
    """The running loop's session for `config` (created on first use)."""
    loop = asyncio.get_running_loop()
    key = (id(loop), config, public_allowed)
    session = _sessions.get(key)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(
                allow_private_endpoints=config.allow_private_endpoints,
                resolver=config.resolver,
                public_allowed=public_allowed,
            ),
            use_dns_cache=False,  # resolve (and vet) for every new connection
            limit=config.max_connections,
            limit_per_host=0,
            keepalive_timeout=config.keepalive_expiry,
            ssl=config.ssl_context or _default_ssl_context(),
        )
        session = aiohttp.ClientSession(
            connector=connector,
            headers={"user-agent": config.user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=True,
        )
        _sessions[key] = session
        loop_module.at_exit(close_sessions)
    return session


async def warm_up(config: ConnectionConfig) -> None:
    """Open the running loop's sessions for `config` ahead of the first call (importing
    aiohttp and loading the trust store otherwise cost that call's user a quarter second)."""
    for public_allowed in (True, False):
        session_for(config, public_allowed=public_allowed)


async def close_sessions() -> None:
    """Close the running loop's sessions (tests, between loops)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [key for key in _sessions if key[0] == loop_id]:
        await _sessions.pop(key).close()


# -- one streaming call ----------------------------------------------------------------------

# Error bodies are a few hundred bytes; model lists a few hundred kilobytes. Anything far
# larger is not what we asked for, and reading it whole would let an endpoint exhaust memory.
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024

_open_calls: set[object] = set()  # set.add and discard are atomic: any loop may touch it


def calls_in_flight() -> int:
    """Provider calls of this process with a request sent and not yet ended."""
    return len(_open_calls)


class EventStream:
    """The server-sent events of one 200 response, as they arrive."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.decoder = SSEDecoder()
        self.at_eof = False
        self.reply_complete = False

    async def events(self) -> AsyncGenerator[ServerSentEvent, None]:
        content = self.response.content
        while True:
            chunk = await content.readany()
            if not chunk:
                self.at_eof = True
                return
            try:
                events = self.decoder.feed(chunk)
            except SSEProtocolError:
                raise ProviderError(ProviderErrorKind.BAD_RESPONSE) from None
            for event in events:
                yield event

    def finished(self) -> None:
        """The reply is complete (its end marker arrived): what is left of the body is read
        in the background, so the connection can serve another call. Not awaited: the reply
        is delivered, and neither the caller nor the call's deadline waits on the rest."""
        self.reply_complete = True


_DRAIN_SECONDS = 5.0
_draining: set[asyncio.Task[None]] = set()


async def settle() -> None:
    """Wait for the background drains of finished replies (tests)."""
    while _draining:
        await asyncio.gather(*_draining, return_exceptions=True)


def _drained_already(response: aiohttp.ClientResponse) -> bool:
    """Whether the rest of the body has arrived already (as it usually has, with the end
    marker): then it is dropped here and now, and the connection is free at once."""
    content = response.content
    while content.read_nowait():  # only what is buffered: never waits
        pass
    return content.at_eof()


async def _drain_then_release(response: aiohttp.ClientResponse) -> None:
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            while await response.content.readany():
                pass
    except (aiohttp.ClientError, TimeoutError):
        response.close()  # not at its end: the connection cannot be reused
    else:
        response.release()


def _timeout(config: ConnectionConfig) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None,
        connect=config.pool_timeout + config.connect_timeout,
        sock_connect=config.connect_timeout,
        sock_read=config.read_timeout,
    )


@contextlib.asynccontextmanager
async def _translated(deadline: asyncio.Timeout) -> AsyncIterator[None]:
    """The call's deadline, and every failure of the request or its reply as a
    `ProviderError` (or `InvalidEndpoint`): the one error mapping of provider calls.

    Raised `from None`: aiohttp's exceptions can carry the request (`request_info`, with its
    headers, so the key), and a chained cause lives as long as the ProviderError.
    """
    try:
        async with deadline:
            yield
    except ProviderError:
        raise
    except TimeoutError:
        if deadline.expired():
            raise ProviderError(
                ProviderErrorKind.TIMEOUT, "The provider took too long to finish the reply."
            ) from None
        raise ProviderError(ProviderErrorKind.TIMEOUT) from None
    except aiohttp.InvalidURL:
        raise InvalidEndpoint("That URL is not valid.") from None
    except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError):
        raise ProviderError(
            ProviderErrorKind.NETWORK, "Could not connect to the provider."
        ) from None
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        raise connection_dropped() from None
    except aiohttp.ClientResponseError:
        # A response that is not HTTP/1.1 as it should be (aiohttp's parser refused it).
        raise ProviderError(ProviderErrorKind.BAD_RESPONSE) from None
    except aiohttp.ClientError:
        raise ProviderError(
            ProviderErrorKind.NETWORK, "The connection to the provider failed."
        ) from None


@contextlib.asynccontextmanager
async def event_stream(
    adapter: HttpAdapter,
    *,
    url: str,
    headers: Mapping[str, str],
    body: Any,
    params: Mapping[str, str] | None,
    api_key: str,
) -> AsyncIterator[EventStream]:
    """POST `body` to `url` and give the reply's event stream. A non-200 answer, or a JSON
    body where a stream was expected, raises the adapter's classified `ProviderError`."""
    config = adapter.config
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    token = object()
    _open_calls.add(token)
    try:
        async with _translated(asyncio.timeout(config.call_deadline)):
            session = session_for(config, public_allowed=url.startswith("https://"))
            response = await session.post(
                url,
                params=params,
                data=data.encode(),
                headers={**headers, "content-type": "application/json"},
                timeout=_timeout(config),
                allow_redirects=False,
            )
            stream = EventStream(response)
            try:
                if response.status != 200:
                    raw = await _read_limited(response, MAX_ERROR_BODY_BYTES, strict=False)
                    raise adapter.error_from_status(response.status, response.headers, raw, api_key)
                if is_json_content(response.headers):
                    raw = await _read_limited(response, MAX_ERROR_BODY_BYTES, strict=True)
                    raise adapter.error_from_unstreamed_body(raw, api_key)
                yield stream
            finally:
                if stream.at_eof:
                    response.release()  # read to the end: the connection can be reused
                elif stream.reply_complete and _drained_already(response):
                    response.release()
                elif stream.reply_complete:
                    task = asyncio.get_running_loop().create_task(_drain_then_release(response))
                    _draining.add(task)
                    task.add_done_callback(_draining.discard)
                else:
                    response.close()  # cut off (cancel, error): the connection goes
    finally:
        _open_calls.discard(token)


async def get_body(
    adapter: HttpAdapter,
    *,
    url: str,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None,
    api_key: str,
) -> bytes:
    """GET `url` and return its body (at most MAX_JSON_BODY_BYTES); a non-200 answer raises
    the adapter's classified `ProviderError`. For key checks and model lists."""
    config = adapter.config
    async with _translated(asyncio.timeout(config.call_deadline)):
        session = session_for(config, public_allowed=url.startswith("https://"))
        response = await session.get(
            url, params=params, headers=headers, timeout=_timeout(config), allow_redirects=False
        )
        try:
            if response.status != 200:
                raw = await _read_limited(response, MAX_ERROR_BODY_BYTES, strict=False)
                raise adapter.error_from_status(response.status, response.headers, raw, api_key)
            return await _read_limited(response, MAX_JSON_BODY_BYTES, strict=True)
        finally:
            response.release()


def is_json_content(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").lower().startswith("application/json")


async def _read_limited(response: aiohttp.ClientResponse, limit: int, *, strict: bool) -> bytes:
    """At most `limit` bytes of a body. Beyond it: `bad_response` when `strict`, else the
    status alone classifies the error (an unreadable body must not turn a 429 into a
    network error)."""
    body = bytearray()
    try:
        while chunk := await response.content.readany():
            body += chunk
            if len(body) > limit:
                if strict:
                    raise ProviderError(
                        ProviderErrorKind.BAD_RESPONSE,
                        "The provider's response was unexpectedly large.",
                    )
                return b""
    except (TimeoutError, aiohttp.ClientError):
        if strict:
            raise
        return b""
    return bytes(body)
