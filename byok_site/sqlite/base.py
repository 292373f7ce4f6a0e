"""Django's SQLite backend, with the writers of one process queued in Python.

SQLite lets one connection write at a time. The others wait in its busy handler, which
sleeps in growing steps (up to 100 ms) and serves nobody in order, so a worker running
dozens of turns in threads can leave one write waiting for seconds while others slip past.
Here a write — a transaction (`atomic()`, which starts with BEGIN IMMEDIATE) or a write
statement outside one — first takes a lock shared by the process's threads: they queue in
Python and the next one goes as soon as the lock is free. Processes (web and worker) still
meet at SQLite's own lock, each with one writer at a time.

Configured by settings.py for every SQLite database (`make run`, tests, benchmarks).
"""

from __future__ import annotations

import threading
from typing import Any

from django.db.backends.sqlite3 import base

WRITE_LOCK = threading.RLock()
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


def _take(timeout: float) -> bool:
    # After `timeout`, go on anyway: SQLite's own lock (and its busy timeout) decides.
    return WRITE_LOCK.acquire(timeout=timeout)


class SQLiteCursorWrapper(base.SQLiteCursorWrapper):
    lock_timeout = 20.0

    def execute(self, query: str, params: Any = None) -> Any:
        if self.connection.in_transaction or not query.lstrip()[:7].upper().startswith(_WRITES):
            return super().execute(query, params)
        taken = _take(self.lock_timeout)
        try:
            return super().execute(query, params)
        finally:
            if taken:
                WRITE_LOCK.release()

    def executemany(self, query: str, param_list: Any) -> Any:
        if self.connection.in_transaction:
            return super().executemany(query, param_list)
        taken = _take(self.lock_timeout)
        try:
            return super().executemany(query, param_list)
        finally:
            if taken:
                WRITE_LOCK.release()


class DatabaseWrapper(base.DatabaseWrapper):
    _holds_write_lock = False

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = self.connection.cursor(factory=SQLiteCursorWrapper)
        cursor.lock_timeout = float(self.settings_dict["OPTIONS"].get("timeout", 20))
        return cursor

    def _start_transaction_under_autocommit(self) -> None:
        if not self._holds_write_lock:
            self._holds_write_lock = _take(float(self.settings_dict["OPTIONS"].get("timeout", 20)))
        try:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]
        except BaseException:
            self._drop_write_lock()
            raise

    def _commit(self) -> None:
        try:
            super()._commit()  # type: ignore[misc]
        finally:
            self._drop_write_lock()

    def _rollback(self) -> None:
        try:
            super()._rollback()  # type: ignore[misc]
        finally:
            self._drop_write_lock()

    def _close(self) -> None:
        try:
            super()._close()  # type: ignore[misc]
        finally:
            self._drop_write_lock()

    def _drop_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            WRITE_LOCK.release()
