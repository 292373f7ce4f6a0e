"""What each process warms at start (the machinery is `core.warmup`): the web when
`byok_site.asgi` loads, a worker in its warm-up bootstep. Neither opens a database
connection or talks to Redis or a provider."""

from __future__ import annotations

from django.template.loader import get_template
from django.urls import get_resolver, reverse

from byok_site.celery import app
from chat import turns
from core.warmup import django_caches

# The pages and fragments of a chat turn (sending renders the messages fragment).
WEB_TEMPLATES = ("chat/conversation.html", "chat/_messages.html")


def web() -> None:
    """The web process: Django's caches, the URLconf, the chat templates, Celery's task
    registry and its publishing pools (built lazily: no broker connection is opened)."""
    django_caches()
    get_resolver().url_patterns  # noqa: B018 - imports every app's URLconf
    reverse("chat:home")  # builds the reverse lookup tables
    for name in WEB_TEMPLATES:
        get_template(name)
    # Imports every app's tasks module now; the lazy way (import_default_modules) would also
    # make Celery's Django fix-up run django.setup() and every system check again.
    app.autodiscover_tasks(force=True)
    app.finalize(auto=True)
    app.connection_for_write().get_transport_cls()  # the broker transport's module
    app.producer_pool  # noqa: B018 - the connection and producer pools, all empty


def worker() -> None:
    """A worker process: Django's caches and the chat turn's own (`chat.turns.warm_up`)."""
    django_caches()
    turns.warm_up()
