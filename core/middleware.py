"""Middleware of the site as a whole."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase


class SyncChain:
    """The innermost middleware, and sync-only on purpose.

    Under ASGI, Django runs each async-capable `MiddlewareMixin` in async mode, which hops to
    a thread and back for its `process_request` and again for its `process_response`: about
    twenty thread hops per request with this site's middleware. One sync-only middleware at
    the bottom of the stack makes Django build the whole chain synchronously, so a request
    enters a thread once and runs every middleware and the view there. Async views (the
    turn stream) still run on the event loop. It does nothing else.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)
