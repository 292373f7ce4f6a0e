"""Start-up warm-up machinery: do at start what a process's first user would wait for.

A fresh process pays once for Django's relation caches, its first templates, Celery's
publishing set-up (the web) and aiohttp's import and trust store (the worker): a quarter
second or more on the first turn after every start or deploy. What to warm is each app's
business (`byok_site.warmup` composes it); this module has the pieces that run it. None of
it may open a database connection or talk to Redis or a provider, so a process with a
service down still starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from celery import bootsteps
from django.apps import apps
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


def django_caches() -> None:
    """Every model's field and relation caches (built on the first query that joins)."""
    for model in apps.get_models():
        model._meta.get_fields()


def quietly(warm: Callable[[], None]) -> None:
    """Run a warm-up; a failure only costs the first request its speed, so it is logged."""
    try:
        warm()
    except Exception:
        logger.warning("warm-up failed; the first request does this work instead", exc_info=True)


class WarmUpStep(bootsteps.StartStopStep):
    """A worker bootstep that runs the warm-up named by `warm` (a dotted path, imported
    when the worker starts, once Django's apps are loaded) on a thread of its own, so the
    worker takes tasks at once; a turn that comes first does that work itself.

    Thread pools only: the warm state lives in the process that runs the turns, and a
    prefork pool would fork its children from a parent that may be importing right then.
    """

    warm: ClassVar[str] = ""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.thread: threading.Thread | None = None

    def include_if(self, parent: Any) -> bool:
        return getattr(parent.pool_cls, "__module__", "") == "celery.concurrency.thread"

    def start(self, parent: Any) -> None:
        self.thread = threading.Thread(target=self._run, name="byok-warm-up", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        quietly(lambda: import_string(self.warm)())

    def stop(self, parent: Any) -> None:
        if self.thread is not None:
            self.thread.join(timeout=30)  # a stopped worker leaves no warm-up behind

    terminate = stop
