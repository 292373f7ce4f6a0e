"""One Redis client per process and URL.

Code never builds its own client: it calls `get_redis()`, which reads `settings.REDIS_URL` at
call time (tests fill it in after settings load) and reuses the connection pool.
"""

from __future__ import annotations

import threading

import redis
from django.conf import settings

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def get_redis() -> redis.Redis:
    url = settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = redis.Redis.from_url(
                    url,
                    decode_responses=True,
                    socket_connect_timeout=2,
                    socket_timeout=5,
                    health_check_interval=30,
                )
                _clients[url] = client
    return client
