"""How provider calls connect: `ConnectionConfig`, a plain value.

providers/ cannot read Django settings, so the Django side builds one from its settings
(`keys.services.connection_config`) and passes it in. Each process keeps one aiohttp session
per config (`providers.aio`), so keep-alive connections and their TLS sessions are reused
across calls and every connection is opened through the network guard.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from providers.netguard import Resolver, system_resolver


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    """How provider calls connect. Hashable: it keys the per-process session cache.

    Timeouts are in seconds. `read_timeout` bounds the silence between two reads (a
    reasoning model can think quietly for a while before its first token); `call_deadline`
    bounds a whole call, streaming included; `pool_timeout` how long a call waits for a free
    connection when `max_connections` are in use. Idle keep-alive connections close after
    `keepalive_expiry`. `ssl_context` None means the default trust store (certifi's); tests
    pass a context that trusts their own CA.
    """

    allow_private_endpoints: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 180.0
    pool_timeout: float = 10.0
    call_deadline: float = 600.0
    max_connections: int = 100
    keepalive_expiry: float = 60.0
    user_agent: str = "byok"
    resolver: Resolver = field(default=system_resolver)
    ssl_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout",
            "read_timeout",
            "pool_timeout",
            "call_deadline",
            "keepalive_expiry",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"ConnectionConfig.{name} must be a positive number of seconds")
        if self.max_connections < 1:
            raise ValueError("ConnectionConfig needs at least one connection in its pool")
