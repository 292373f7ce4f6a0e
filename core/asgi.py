"""Django's ASGI handler, plus responses whose body streams detached.

Django keeps a request's ThreadSensitiveContext — and with it an executor thread and that
thread's database connection — open until the whole response has been sent. For a
server-sent event stream that may stay open for hours, that is one thread per browser tab.
A response with a `detach()` method (`chat.sse.EventStreamResponse`) is therefore sent in
two parts: Django runs the view and every middleware as usual (authentication, CSRF, CSP
and security headers, cookies) and fires `request_finished`; once its context has closed,
the response start goes out with the headers it produced, and the detached body streams in
plain asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.http import HttpResponseBase


class _Send:
    """The server's `send`, with room for a response to be streamed after Django is done."""

    __slots__ = ("detached", "send")

    def __init__(self, send: Any) -> None:
        self.send = send
        self.detached: HttpResponseBase | None = None

    async def __call__(self, message: Mapping[str, Any]) -> None:
        await self.send(message)


def response_start(response: HttpResponseBase) -> dict[str, Any]:
    """The `http.response.start` message of a streaming response, as Django would send it."""
    headers = [
        (name.encode("ascii"), value.encode("latin1"))
        for name, value in response.items()
        if name.lower() != "content-length"
    ]
    headers += [
        (b"Set-Cookie", cookie.output(header="").encode("ascii").strip())
        for cookie in response.cookies.values()
    ]
    return {"type": "http.response.start", "status": response.status_code, "headers": headers}


class ASGIHandler(DjangoASGIHandler):
    """Django's ASGI handler; a response with `detach()` streams after Django is done."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        slot = _Send(send)
        await super().__call__(scope, receive, slot)  # the view, middleware, request_finished
        response, slot.detached = slot.detached, None
        if response is not None:
            start, body = response_start(response), response.detach()  # type: ignore[attr-defined]
            del response
            await send(start)
            await body.serve(send, receive)

    async def send_response(self, response: HttpResponseBase, send: Any) -> None:
        if isinstance(send, _Send) and hasattr(response, "detach"):
            send.detached = response  # sent by __call__, outside the request's context
            return
        await super().send_response(response, send)
