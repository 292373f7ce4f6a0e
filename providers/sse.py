"""An incremental Server-Sent Events parser that takes bytes exactly as the network delivers them.

It follows the WHATWG "event stream interpretation": lines end in CRLF, LF or CR; `:` lines are
comments; `data:` lines of one event are joined with newlines; an event is dispatched on an
empty line and an event without data is not dispatched. Lines are split on bytes and decoded
one complete line at a time, so a multi-byte UTF-8 character split across two reads is decoded
whole, and a CR at the end of one read followed by an LF at the start of the next is one line
end, not two. The result is that any split of the same bytes yields the same events.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# One line of an event stream longer than this is not an LLM token stream any more; refuse it
# instead of buffering without bound.
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024

_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SSEProtocolError(ValueError):
    """The byte stream cannot be an event stream (for example, an endless line)."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed it chunks of bytes; it returns the events completed by each chunk."""

    def __init__(self, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        # Bytes of _buffer already searched for a line end, so a long line arriving in many
        # small reads is scanned once, not once per read.
        self._scanned = 0
        self._skip_leading_lf = False
        self._at_stream_start = True
        self._event_type = ""
        self._data_lines: list[str] = []
        self._last_event_id: str | None = None
        self._retry: int | None = None

    @property
    def has_partial_event(self) -> bool:
        """True if the bytes so far end inside an event (it would be dropped at end of stream)."""
        return bool(self._buffer) or bool(self._data_lines) or bool(self._event_type)

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume one read's worth of bytes and return the events it completed."""
        if not chunk:
            return []
        if self._skip_leading_lf:
            self._skip_leading_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        self._buffer += chunk
        events: list[ServerSentEvent] = []
        start = 0
        search_from = self._scanned
        while True:
            match = _LINE_END.search(self._buffer, search_from)
            if match is None:
                break
            line = bytes(self._buffer[start : match.start()])
            if match.group() == b"\r" and match.end() == len(self._buffer):
                # A CR at the very end may be the first half of a CRLF split across reads.
                self._skip_leading_lf = True
            start = search_from = match.end()
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if len(self._buffer) > self._max_line_bytes:
            raise SSEProtocolError("an event stream line exceeded the size limit")
        return events

    def _process_line(self, raw_line: bytes) -> ServerSentEvent | None:
        if self._at_stream_start:
            self._at_stream_start = False
            if raw_line.startswith(_BOM):
                raw_line = raw_line[len(_BOM) :]
        line = raw_line.decode("utf-8", errors="replace")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data_lines.append(value)
        elif name == "id":
            if "\0" not in value:
                self._last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data_lines:
            self._event_type = ""
            return None
        event = ServerSentEvent(
            event=self._event_type or "message",
            data="\n".join(self._data_lines),
            id=self._last_event_id,
            retry=self._retry,
        )
        self._event_type = ""
        self._data_lines = []
        return event
