"""The checks behind `/healthz`, each bounded in time whatever is down.

A check that cannot answer within `BYOK_HEALTHZ_TIMEOUT` seconds counts as down: the checks
run at once on threads of their own and the answer does not wait past the deadline. Each
check also bounds itself (a fresh database connection with a connect timeout, outside the
pool, whose own timeout is 30 s; a Redis client of its own with socket timeouts and no
retries), so a thread left behind ends soon after.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import redis
from django.conf import settings
from django.db import connections
from django.db.utils import load_backend
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.heartbeat import live_workers

logger = logging.getLogger(__name__)

# Enough for a few probes in flight at once; one that finds every thread busy waits for
# the deadline like any slow check.
_executor = ThreadPoolExecutor(max_workers=6, thread_name_prefix="healthz")


def default_database() -> Mapping[str, Any]:
    """The settings of the database the site uses."""
    return connections["default"].settings_dict


def database_check(*, database: Mapping[str, Any], timeout: float) -> None:
    """`SELECT 1` on a fresh connection to `database` (not the pool's: a pool that cannot
    connect waits its whole timeout). Raises when it fails."""
    options = {k: v for k, v in dict(database.get("OPTIONS") or {}).items() if k != "pool"}
    if "postgresql" in database["ENGINE"]:
        options["connect_timeout"] = max(2, math.ceil(timeout))  # libpq's least is 2 s
    backend = load_backend(database["ENGINE"])
    wrapper = backend.DatabaseWrapper(
        {**database, "OPTIONS": options, "CONN_MAX_AGE": 0}, alias="healthz"
    )
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            if cursor.fetchone() != (1,):
                raise RuntimeError("SELECT 1 did not answer 1")
    finally:
        wrapper.close()


def redis_check(*, url: str, timeout: float) -> int:
    """PING Redis at `url` and count the workers whose heartbeat is recent, on a client of
    its own with socket timeouts and no retries. Raises when Redis does not answer."""
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
        return len(live_workers(client=client))
    finally:
        client.close()


def health_report(
    *,
    database: Mapping[str, Any] | None = None,
    redis_url: str | None = None,
    timeout: float | None = None,
) -> dict[str, object]:
    """Database, Redis and worker status, within `timeout` seconds (BYOK_HEALTHZ_TIMEOUT):
    `{"status", "checks": {part: "ok" | "down"}, "workers", "down": [parts]}`, "down"
    only when a part is."""
    timeout = settings.BYOK_HEALTHZ_TIMEOUT if timeout is None else timeout
    database = default_database() if database is None else database
    url = settings.REDIS_URL if redis_url is None else redis_url
    jobs: dict[str, Callable[[], object]] = {
        "database": lambda: database_check(database=database, timeout=timeout),
        "redis": lambda: redis_check(url=url, timeout=timeout),
    }
    futures = {name: _executor.submit(job) for name, job in jobs.items()}
    wait(futures.values(), timeout=timeout)
    results: dict[str, object] = {}
    for name, future in futures.items():
        if not future.done():
            logger.warning("healthz: the %s check did not answer within %s s", name, timeout)
            continue
        error = future.exception()
        if error is not None:
            logger.warning("healthz: the %s check failed: %r", name, error)
            continue
        results[name] = future.result()
    workers = results.get("redis")
    worker_count = workers if isinstance(workers, int) else 0
    checks = {
        "database": "ok" if "database" in results else "down",
        "redis": "ok" if "redis" in results else "down",
        "worker": "ok" if worker_count else "down",
    }
    down = [name for name, state in checks.items() if state != "ok"]
    report: dict[str, object] = {
        "status": "ok" if not down else "down",
        "checks": checks,
        "workers": worker_count,
    }
    if down:
        report["down"] = down
    return report
