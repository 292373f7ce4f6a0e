"""SQLite: a process's writers queue on one lock in Python, not in SQLite's busy handler."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from accounts.models import AuditEvent
from byok_site.sqlite.base import WRITE_LOCK

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
