"""A chat turn's live stream: one Redis stream per reply, `byok:turn:<message id>`.

The worker appends the reply's deltas (`core.streams.StreamWriter`) and ends with one `done`
or `error` entry carrying what the page shows; the SSE view (`chat.sse`) follows it. The
database has the final text, so the stream may expire.
"""

from __future__ import annotations

from core.streams import EVENT_DONE, EVENT_ERROR, get_writer


def stream_key(message_id: object) -> str:
    return f"byok:turn:{message_id}"


class TurnPublisher:
    """Appends a turn's events to its stream. Never raises: a Redis outage must not lose the
    turn (the final text still lands in the database, and the SSE view serves it from there).
    """

    def __init__(self, message_id: object) -> None:
        self.key = stream_key(message_id)
        self.writer = get_writer()
        self.sent_any = False

    def delta(self, text: str) -> None:
        """The first delta goes out at once; later ones with the next tick's batch."""
        if text:
            self.writer.add(self.key, text, now=not self.sent_any)
            self.sent_any = True

    def done(
        self, *, status: str, html: str, notice: str = "", facts: dict[str, str] | None = None
    ) -> None:
        self.writer.finish(
            self.key,
            {"type": EVENT_DONE, "status": status, "html": html, "notice": notice, **(facts or {})},
        )

    def error(
        self, *, message: str, action: str, html: str = "", facts: dict[str, str] | None = None
    ) -> None:
        self.writer.finish(
            self.key,
            {
                "type": EVENT_ERROR,
                "message": message,
                "action": action,
                "html": html,
                **(facts or {}),
            },
        )
