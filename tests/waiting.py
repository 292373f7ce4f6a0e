"""Waiting for a condition, the way every test waits: never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], message: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail with `message` after `timeout` seconds (a
    deadline for a failure only: the wait ends as soon as the condition holds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(message)
        time.sleep(0.01)
