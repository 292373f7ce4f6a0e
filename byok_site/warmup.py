"""Start-up warm-up: what each process would otherwise do while its first user waits.

A fresh process pays once for Django's relation caches, its first templates, Celery's
publishing set-up (the web) and aiohttp's import and trust store (the worker): a quarter
second or more on the first turn after every start or deploy. None of it opens a database
connection or talks to Redis or a provider, so a process with a service down still starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.apps import apps
from django.template.loader import get_template
from django.urls import get_resolver, reverse

logger = logging.getLogger(__name__)

# The pages and fragments of a chat turn (sending renders the messages fragment).
WEB_TEMPLATES = ("chat/conversation.html", "chat/_messages.html")


def django_caches() -> None:
    """Every model's field and relation caches (built on the first query that joins)."""
    for model in apps.get_models():
        model._meta.get_fields()


def web() -> None:
    """The web process: Django's caches, the URLconf, the chat templates, Celery's task
    registry and its publishing pools (built lazily: no broker connection is opened)."""
    django_caches()
    get_resolver().url_patterns  # noqa: B018 - imports every app's URLconf
    reverse("chat:home")  # builds the reverse lookup tables
    for name in WEB_TEMPLATES:
        get_template(name)
    from byok_site.celery import app

    # Imports every app's tasks module now; the lazy way (import_default_modules) would also
    # make Celery's Django fix-up run django.setup() and every system check again.
    app.autodiscover_tasks(force=True)
    app.finalize(auto=True)
    app.connection_for_write().get_transport_cls()  # the broker transport's module
    app.producer_pool  # noqa: B018 - the connection and producer pools, all empty


def worker() -> None:
    """A worker process: Django's caches and the chat turn's own (`chat.turns.warm_up`)."""
    from chat.turns import warm_up

    django_caches()
    warm_up()


def quietly(warm: Callable[[], None]) -> None:
    """Run a warm-up; a failure only costs the first request its speed, so it is logged."""
    try:
        warm()
    except Exception:
        logger.warning("warm-up failed; the first request does this work instead", exc_info=True)
