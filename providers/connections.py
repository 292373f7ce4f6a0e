"""Connections: one shared, guarded httpx client per configuration, and per-call deadlines.

Every provider call in a process goes through `shared_client(config)`, so keep-alive
connections (and their TLS sessions) are reused across calls, pool limits hold process-wide,
and every connection is opened through the network guard. `ConnectionConfig` is a plain
value: providers/ cannot read Django settings, so the Django side builds one from its
settings and passes it in.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpcore
import httpx

from providers.errors import InvalidEndpoint, ProviderError, ProviderErrorKind, connection_dropped
from providers.netguard import GuardedNetworkBackend, Resolver, system_resolver


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """How provider calls connect. Hashable: it is the key of the shared-client cache.

    Timeouts are in seconds. `read_timeout` bounds the silence between two reads (a
    reasoning model can think quietly for a while before its first token); `call_deadline`
    bounds a whole call, streaming included. `ssl_context` None means the default trust
    store; tests pass a context that trusts their own CA.
    """

    allow_private_endpoints: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 180.0
    write_timeout: float = 30.0
    pool_timeout: float = 10.0
    call_deadline: float = 600.0
    max_connections: int = 100
    max_keepalive_connections: int = 20
    keepalive_expiry: float = 60.0
    user_agent: str = "byok"
    resolver: Resolver = field(default=system_resolver)
    ssl_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout",
            "read_timeout",
            "write_timeout",
            "pool_timeout",
            "call_deadline",
            "keepalive_expiry",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"ConnectionConfig.{name} must be a positive number of seconds")
        if self.max_connections < 1 or self.max_keepalive_connections < 0:
            raise ValueError("ConnectionConfig needs at least one connection in its pool")


_clients: dict[ConnectionConfig, httpx.Client] = {}
_clients_lock = threading.Lock()


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport, with its connection pool opened through the network guard.

    httpx does not take a network backend as an argument, so the pool it builds is replaced
    by an identical one that has the guarded backend. tests/test_netguard.py proves that the
    connection goes through it, so an httpx change that breaks this fails loudly.
    """

    def __init__(self, config: ConnectionConfig) -> None:
        super().__init__(trust_env=False, retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=config.ssl_context or httpx.create_ssl_context(trust_env=False),
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_keepalive_connections,
            keepalive_expiry=config.keepalive_expiry,
            http1=True,
            http2=False,
            retries=0,
            network_backend=GuardedNetworkBackend(
                allow_private_endpoints=config.allow_private_endpoints,
                resolver=config.resolver,
            ),
        )


def shared_client(config: ConnectionConfig) -> httpx.Client:
    """The process-wide client for `config`, created on first use.

    Redirects are never followed (a redirect could lead a key to another host), proxies from
    the environment are ignored (a proxy would resolve and connect on our behalf, around the
    guard), and the timeouts are the config's.
    """
    client = _clients.get(config)
    if client is not None:
        return client
    with _clients_lock:
        client = _clients.get(config)
        if client is None:
            client = httpx.Client(
                transport=_GuardedTransport(config),
                timeout=_timeout(config, remaining=None),
                follow_redirects=False,
                trust_env=False,
                headers={"user-agent": config.user_agent},
            )
            _clients[config] = client
        return client


def close_shared_clients() -> None:
    """Close every shared client (at shutdown, or between tests)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


def _forget_clients_after_fork() -> None:
    # A forked worker must not share the parent's sockets; the parent still owns (and will
    # close) them, so the child just starts with an empty cache.
    global _clients_lock
    _clients.clear()
    _clients_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_clients_after_fork)


def _timeout(config: ConnectionConfig, *, remaining: float | None) -> httpx.Timeout:
    def capped(value: float) -> float:
        return value if remaining is None else max(0.001, min(value, remaining))

    return httpx.Timeout(
        connect=capped(config.connect_timeout),
        read=capped(config.read_timeout),
        write=capped(config.write_timeout),
        pool=capped(config.pool_timeout),
    )


class Deadline:
    """The overall time limit of one call, checked between reads."""

    def __init__(self, seconds: float) -> None:
        self._expires_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._expires_at - time.monotonic()

    def check(self) -> None:
        """Raise a `timeout` ProviderError once the deadline has passed."""
        if self.remaining() <= 0:
            raise ProviderError(
                ProviderErrorKind.TIMEOUT, "The provider took too long to finish the reply."
            )

    def timeout(self, config: ConnectionConfig) -> httpx.Timeout:
        """Per-operation timeouts, none longer than what is left of the deadline."""
        self.check()
        return _timeout(config, remaining=self.remaining())


@contextlib.contextmanager
def translated_transport_errors() -> Iterator[None]:
    """Turn httpx's exceptions into `ProviderError`s (and bad URLs into `InvalidEndpoint`).

    Raised from None where the original could carry request details: h11 quotes the
    offending header value in `LocalProtocolError`, and that header could be the key.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderError(ProviderErrorKind.TIMEOUT) from exc
    except httpx.DecodingError as exc:
        raise ProviderError(ProviderErrorKind.BAD_RESPONSE) from exc
    except httpx.RemoteProtocolError as exc:
        raise connection_dropped() from exc
    except httpx.LocalProtocolError:
        raise ProviderError(
            ProviderErrorKind.BAD_REQUEST, "The request could not be sent to the provider."
        ) from None
    except httpx.UnsupportedProtocol:
        raise InvalidEndpoint("Only http:// and https:// URLs can be used.") from None
    except httpx.ConnectError as exc:
        raise ProviderError(
            ProviderErrorKind.NETWORK, "Could not connect to the provider."
        ) from exc
    except httpx.TransportError as exc:
        raise ProviderError(
            ProviderErrorKind.NETWORK, "The connection to the provider failed."
        ) from exc
    except httpx.InvalidURL:
        raise InvalidEndpoint("That URL is not valid.") from None
