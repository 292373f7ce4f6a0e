"""Django's SQLite backend, with writers queued in Python and across processes.

SQLite lets one connection write at a time. The others wait in its busy handler, which
sleeps in growing steps (up to 100 ms) and serves nobody in order, so a worker running
dozens of turns in threads — or the web process, while the worker writes — can leave one
write waiting for seconds while others slip past. Here a write — a transaction (`atomic()`,
which starts with BEGIN IMMEDIATE) or a write statement outside one — first takes:

1. a lock shared by the process's threads (they queue in Python), then
2. an exclusive `flock` on `<database>.writers`, a file next to the database, shared by
   every process using it (the web, the worker, beat, management commands). The holder
   gives it back at commit/rollback; a waiting process polls it every millisecond or two,
   instead of sleeping up to 100 ms in SQLite's busy handler while the other process's
   writers hand SQLite's lock to each other.

Both are taken with the connection's `timeout`: after that the write goes on anyway and
SQLite's own lock (and its busy timeout) decides, as it would without this module. A
process that dies holding the file lock loses it with its file descriptor. An in-memory
database has no file and no other process: it only queues in Python.

Configured by settings.py for every SQLite database (`make run`, tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from django.db.backends.sqlite3 import base, creation

logger = logging.getLogger(__name__)

WRITE_LOCK = threading.RLock()
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")

# The file lock is held while this process's WRITE_LOCK is held (at any depth); only the
# thread holding WRITE_LOCK reads or changes these.
_depth = 0
_held_fd: int | None = None
_files: dict[str, int] = {}  # database path -> open lock file, one per process
_files_lock = threading.Lock()
_unusable: set[str] = set()  # lock files that could not be opened (warned once each)
_POLL_FIRST = 0.0002
_POLL_MAX = 0.002


def _forget_after_fork() -> None:
    # A child shares its parent's open lock files (and their locks): it opens its own. The
    # locks of the parent's threads mean nothing here; inherited connections that believe
    # they hold them give back nothing (_give_back at depth 0).
    global WRITE_LOCK, _depth, _held_fd, _files_lock
    WRITE_LOCK = threading.RLock()
    _files_lock = threading.Lock()
    for fd in _files.values():
        os.close(fd)  # closing never unlocks the parent's lock; LOCK_UN would
    _files.clear()
    _depth, _held_fd = 0, None


os.register_at_fork(after_in_child=_forget_after_fork)


def lock_file_path(database: str) -> str | None:
    """`<database>.writers` (the real path, so every process finds the same file), or None
    for an in-memory database."""
    if not database or ":memory:" in database or "mode=memory" in database:
        return None
    if database.startswith("file:"):
        database = unquote(database[5:].split("?", 1)[0])
    return f"{os.path.realpath(database)}.writers"


def _lock_fd(path: str) -> int:
    with _files_lock:
        fd = _files.get(path)
        if fd is None:
            # Opened read-only (flock needs no more): a management command run by another
            # user of the database's group can queue too; owner-writable, group-readable.
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
            _files[path] = fd
        return fd


def _flock(fd: int, deadline: float) -> bool:
    """Take the file lock, polling until `deadline`; False if it never came free.

    Not a fair queue: a process whose threads write back to back can take the lock again
    before a polling process looks (it looks every 2 ms at most, where SQLite's busy handler
    sleeps up to 100 ms).
    """
    pause = _POLL_FIRST
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)


def _take(timeout: float, path: str | None) -> bool:
    """Take the process's write lock (and, at its first level, the file lock).

    After `timeout`, go on anyway: SQLite's own lock (and its busy timeout) decides. So does
    a lock file that cannot be opened (logged once): the write is never refused here.
    """
    global _depth, _held_fd
    deadline = time.monotonic() + timeout
    if not WRITE_LOCK.acquire(timeout=timeout):
        return False
    _depth += 1
    if _depth == 1 and path is not None:
        try:
            fd = _lock_fd(path)
            if _flock(fd, deadline):
                _held_fd = fd
        except OSError as error:
            if path not in _unusable:
                _unusable.add(path)
                logger.warning(
                    "SQLite writers cannot queue on %s (%s); SQLite's busy timeout decides",
                    path,
                    error.strerror,
                )
    return True


def _give_back() -> None:
    global _depth, _held_fd
    if _depth <= 0:
        return  # a lock taken before this process was forked: nothing of it is held here
    _depth -= 1
    if _depth == 0 and _held_fd is not None:
        fd, _held_fd = _held_fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
    WRITE_LOCK.release()


@contextlib.contextmanager
def _queued(timeout: float, path: str | None) -> Iterator[None]:
    """One autocommit write statement, queued like a transaction."""
    taken = _take(timeout, path)
    try:
        yield
    finally:
        if taken:
            _give_back()


class SQLiteCursorWrapper(base.SQLiteCursorWrapper):
    lock_timeout = 20.0
    lock_path: str | None = None

    def execute(self, query: str, params: Any = None) -> Any:
        if self.connection.in_transaction or not query.lstrip()[:7].upper().startswith(_WRITES):
            return super().execute(query, params)
        with _queued(self.lock_timeout, self.lock_path):
            return super().execute(query, params)

    def executemany(self, query: str, param_list: Any) -> Any:
        if self.connection.in_transaction:
            return super().executemany(query, param_list)
        with _queued(self.lock_timeout, self.lock_path):
            return super().executemany(query, param_list)


class DatabaseCreation(creation.DatabaseCreation):
    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> None:
        super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]
        path = lock_file_path(test_database_name)
        if path is not None:
            with _files_lock:
                fd = _files.get(path)
                if fd is not None and fd != _held_fd:  # never close a lock still held
                    del _files[path]
                    os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # the test database is gone; its lock file goes with it


class DatabaseWrapper(base.DatabaseWrapper):
    creation_class = DatabaseCreation
    _holds_write_lock = False

    @property
    def _lock_timeout(self) -> float:
        return float(self.settings_dict["OPTIONS"].get("timeout", 20))

    _lock_path_for: tuple[str, str | None] | None = None

    @property
    def _lock_path(self) -> str | None:
        # Cached per database name: the test runner renames the database after start-up.
        name = str(self.settings_dict["NAME"])
        if self._lock_path_for is None or self._lock_path_for[0] != name:
            path = None if self.is_in_memory_db() else lock_file_path(name)
            self._lock_path_for = (name, path)
        return self._lock_path_for[1]

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = self.connection.cursor(factory=SQLiteCursorWrapper)
        cursor.lock_timeout = self._lock_timeout
        cursor.lock_path = self._lock_path
        return cursor

    def _start_transaction_under_autocommit(self) -> None:
        if not self._holds_write_lock:
            self._holds_write_lock = _take(self._lock_timeout, self._lock_path)
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
            _give_back()
