"""Search every store (each table of the database, each Redis key) for a planted value."""

from __future__ import annotations

import json
from collections.abc import Sequence

from django.db import connection

from core.redis import get_redis


def database_rows_containing(needle: str) -> list[str]:
    hits = []
    encoded = needle.encode()
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, memoryview):
                        value = value.tobytes()
                    if (isinstance(value, bytes) and encoded in value) or (
                        not isinstance(value, bytes) and needle in str(value)
                    ):
                        hits.append(f"{table}: {row!r}"[:200])
    return hits


def redis_entries_containing(needle: str) -> list[str]:
    client = get_redis()
    hits = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: Sequence[object]
        if kind == "string":
            values = [client.get(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [*client.hkeys(key), *client.hvals(key)]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "stream":
            values = [json.dumps(entry) for entry in client.xrange(key) or []]
        else:
            values = []
        if needle in key or any(needle in str(value) for value in values):
            hits.append(key)
    return hits
