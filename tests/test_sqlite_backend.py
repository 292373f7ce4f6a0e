"""SQLite: writers queue on a lock in Python and on a file lock across processes, not in
SQLite's busy handler."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from django.db import connection, connections, transaction

from accounts.models import AuditEvent
from core.sqlite import base as backend
from core.sqlite.base import WRITE_LOCK, lock_file_path

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "sqlite", reason="the write queue is the SQLite backend's"
    ),
]


def lock_is_free() -> bool:
    """True if no other thread holds the write lock (checked from a thread of its own)."""
    result: list[bool] = []

    def probe() -> None:
        taken = WRITE_LOCK.acquire(blocking=False)
        if taken:
            WRITE_LOCK.release()
        result.append(taken)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return result[0]


def record(owner, action: str) -> None:
    AuditEvent.objects.create(owner=owner, action=action)


def test_a_write_transaction_holds_the_lock_until_it_ends(alice):
    assert lock_is_free()
    with transaction.atomic():
        record(alice, "a")
        assert not lock_is_free(), "another thread's write would queue here"
    assert lock_is_free()


def test_a_rolled_back_transaction_and_a_closed_connection_let_go(alice):
    with pytest.raises(RuntimeError), transaction.atomic():
        record(alice, "b")
        raise RuntimeError("boom")
    assert lock_is_free()
    transaction.set_autocommit(False)
    record(alice, "c")
    connection.close()  # never committed: closing must not keep the lock
    assert lock_is_free()


def test_many_threads_writing_at_once_all_land(alice):
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for step in range(10):
                with transaction.atomic():
                    record(alice, f"t{index}-{step}")
                record(alice, f"t{index}-{step}-autocommit")
        except BaseException as error:
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert AuditEvent.objects.filter(owner=alice).count() == 12 * 10 * 2
    assert lock_is_free()


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
fcntl.flock(fd, fcntl.LOCK_UN)
print("free", flush=True)
sys.stdin.readline()
"""

PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("busy")
else:
    print("free")
"""


def _lock_path() -> str:
    path = lock_file_path(str(connection.settings_dict["NAME"]))
    assert path is not None, "the test database is a file"
    return path


def test_a_write_in_another_process_holds_this_one_back_until_it_ends(alice, monkeypatch):
    """Processes queue on the `.writers` file lock, and the next one goes at once: it looks
    again every 2 ms at most (SQLite's busy handler would sleep up to 100 ms between tries)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, _lock_path()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        written = threading.Event()
        pauses: list[float] = []  # the waiting write's sleeps between two looks at the lock

        def write() -> None:
            try:
                with transaction.atomic():
                    record(alice, "waited")
                written.set()
            finally:
                connections.close_all()

        thread = threading.Thread(target=write)

        def sleep(seconds: float) -> None:
            if threading.current_thread() is thread:
                pauses.append(seconds)
            time.sleep(seconds)

        monkeypatch.setattr(backend, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
        thread.start()
        deadline = time.monotonic() + 30
        while len(pauses) < 10 and not written.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not written.is_set(), "the write went ahead while another process held the lock"
        assert len(pauses) >= 10, "the write is not waiting for the file lock"
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "free"
        thread.join(30)
        assert written.is_set(), "the write never went ahead once the lock was free"
        assert max(pauses) <= 0.002, f"it waited {max(pauses)} s between two looks"
    finally:
        holder.kill()
        holder.wait()
    assert AuditEvent.objects.filter(owner=alice, action="waited").exists()


def test_a_write_transaction_holds_the_file_lock_against_other_processes(alice):
    def probe() -> str:
        result = subprocess.run(
            [sys.executable, "-c", PROBE, _lock_path()], capture_output=True, text=True, check=True
        )
        return result.stdout.strip()

    assert probe() == "free"
    with transaction.atomic():
        record(alice, "held")
        assert probe() == "busy"
    assert probe() == "free"
    record(alice, "autocommit")  # a single write statement takes and gives back the lock too
    assert probe() == "free"


def test_lock_file_paths(tmp_path):
    assert lock_file_path(":memory:") is None
    assert lock_file_path("file::memory:?cache=shared") is None
    assert lock_file_path("file:memorydb_default?mode=memory&cache=shared") is None
    assert lock_file_path("/srv/byok/db.sqlite3") == "/srv/byok/db.sqlite3.writers"
    assert lock_file_path("file:/srv/byok/my%20db.sqlite3?mode=rw") == (
        "/srv/byok/my db.sqlite3.writers"
    )
    real = tmp_path / "db.sqlite3"
    real.touch()
    (tmp_path / "link.sqlite3").symlink_to(real)
    assert lock_file_path(str(tmp_path / "link.sqlite3")) == f"{real}.writers"


def test_a_lock_file_that_cannot_be_opened_never_blocks_or_keeps_the_lock(caplog):
    assert backend._take(0.5, "/nonexistent-directory/db.sqlite3.writers")
    backend._give_back()
    assert lock_is_free(), "the process lock was kept after the lock file failed to open"
    assert "cannot queue" in caplog.text


def test_a_forked_child_writes_even_if_a_parent_thread_held_the_lock():
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with WRITE_LOCK:
            taken.set()
            release.wait(30)  # held until the parent has its child's answer

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(5)
    try:
        pid = os.fork()
        if pid == 0:  # the child: the parent's thread does not exist here
            code = 1
            try:
                # The parent's holder never gives the lock back here: taking it at all (rather
                # than giving up after the timeout) means the child did not inherit it.
                if backend._take(2.0, None):
                    backend._give_back()
                    backend._give_back()  # one too many (a stale connection): harmless
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        holder.join(5)
