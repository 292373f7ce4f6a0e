"""The process's relay loop: one asyncio event loop on a daemon thread, started on first use.

A worker relays many replies at once. The loop reads every provider stream
(`HttpAdapter.astream_chat`) and writes every turn's Redis stream (`chat.streams`), so the
per-token work of all turns happens on one thread, with no thread wake-up and no hand-off of
the interpreter lock per token. Blocking threads (a turn's own, a key check's) hand it work
with `submit`, or `call` to wait for the answer.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_lock = threading.Lock()
# Coroutines run on the loop at exit (closing keep-alive connections politely).
_exit_hooks: list[Callable[[], Coroutine[Any, Any, None]]] = []


def relay_loop() -> asyncio.AbstractEventLoop:
    """The process's relay loop, started on first use."""
    global _loop, _loop_thread
    loop = _loop
    if loop is not None:
        return loop
    with _loop_lock:
        if _loop is None:
            loop = _new_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="relay-loop", daemon=True)
            thread.start()
            ready.wait()
            _loop_thread = thread
            _loop = loop
            atexit.register(_at_exit, loop)
        return _loop


def on_relay_loop() -> bool:
    """Whether the caller runs on the relay loop's thread."""
    return _loop_thread is threading.current_thread()


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run `coro` on the relay loop; cancelling the returned future cancels the task."""
    return asyncio.run_coroutine_threadsafe(coro, relay_loop())


def call(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the relay loop and wait for its result, from a blocking thread (a key
    check in a worker's task). The coroutine bounds its own time (a call's deadline)."""
    if on_relay_loop():
        coro.close()
        raise RuntimeError("providers.loop.call blocks: await the coroutine on the loop instead")
    return submit(coro).result()


def at_exit(hook: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `hook()` on the relay loop when the process exits (once per hook)."""
    if hook not in _exit_hooks:
        _exit_hooks.append(hook)


def _at_exit(loop: asyncio.AbstractEventLoop) -> None:
    for hook in _exit_hooks:
        if loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(hook(), loop).result(timeout=2)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # installed with uvicorn[standard]; a faster loop, same semantics
    except ImportError:  # pragma: no cover - uvloop ships with the web server's extras
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _forget_loop_after_fork() -> None:
    # The loop's thread does not exist in a forked child: it starts its own on first use.
    global _loop, _loop_thread, _loop_lock
    _loop = _loop_thread = None
    _loop_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_loop_after_fork)
