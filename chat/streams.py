"""A chat turn's live stream: one Redis stream per reply, `byok:turn:<message id>`.

The worker appends the reply's deltas (`core.streams.StreamWriter`) and ends with one `done`
or `error` entry carrying what the page shows; the SSE view (`chat.sse`) follows it. The
database has the final text, so the stream may expire.

Every entry is sealed with the owner's data key (purpose `turn_stream`, bound to the reply
and to the entry's type): Redis holds no readable text of a conversation, not while the
reply streams and not after, and an entry written to Redis by anyone without the key does
not open, so it is never shown. An entry is `{"type": <delta|done|error>, "sealed": <b64>}`;
the sealed part is the entry's fields as JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging

from core.redis import get_redis
from core.streams import EVENT_DELTA, EVENT_DONE, EVENT_ERROR, get_writer
from vault.services import OwnerCipher, VaultError

logger = logging.getLogger(__name__)

PURPOSE_STREAM = "turn_stream"
EVENT_TYPES = frozenset({EVENT_DELTA, EVENT_DONE, EVENT_ERROR})


def stream_key(message_id: object) -> str:
    return f"byok:turn:{message_id}"


def seal_entry(
    cipher: OwnerCipher, message_id: object, kind: str, data: dict[str, str]
) -> dict[str, str]:
    """One stream entry of `kind`, its fields sealed for the reply's owner."""
    sealed = cipher.seal(
        PURPOSE_STREAM,
        message_id,
        json.dumps(data, separators=(",", ":")),
        extra={"type": kind},
        seal_empty=True,
    )
    return {"type": kind, "sealed": base64.b64encode(sealed).decode("ascii")}


def open_entry(
    cipher: OwnerCipher | None, message_id: object, fields: dict[str, str]
) -> dict[str, str] | None:
    """The fields of a sealed entry, or None when it does not open (not sealed for this
    reply and type with this owner's key, altered, or of an unknown type)."""
    kind = fields.get("type", "")
    sealed = fields.get("sealed")
    if cipher is None or kind not in EVENT_TYPES or sealed is None:
        return None
    try:
        raw = base64.b64decode(sealed, validate=True)
        data = json.loads(cipher.open(PURPOSE_STREAM, message_id, raw, extra={"type": kind}))
    except (VaultError, ValueError, binascii.Error):
        return None
    if not isinstance(data, dict):
        return None
    return {str(name): str(value) for name, value in data.items()}


def streamed_text(cipher: OwnerCipher, message_id: object) -> str:
    """The text of a turn's delta entries, opened: what its owner's page showed ("" when
    the stream is gone or Redis is away)."""
    try:
        entries: list[tuple[str, dict[str, str]]] = get_redis().xrange(stream_key(message_id))  # type: ignore[assignment]
    except Exception:
        logger.warning("could not read the stream of turn %s", message_id, exc_info=True)
        return ""
    texts = []
    for _, fields in entries:
        if fields.get("type") == EVENT_DELTA:
            data = open_entry(cipher, message_id, fields)
            if data is not None:
                texts.append(data.get("text", ""))
    return "".join(texts)


def streams_delete(message_ids: list[object]) -> None:
    """Delete the streams of these replies (their conversation or account is going). Their
    entries no longer open once the owner's data key is gone; this takes the rest away."""
    keys = [stream_key(message_id) for message_id in message_ids]
    try:
        client = get_redis()
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except Exception:  # Redis is down: the entries stay sealed and expire on their own
        logger.warning("could not delete %d turn streams", len(keys), exc_info=True)


class TurnPublisher:
    """Appends a turn's sealed events to its stream. Never raises: a Redis outage must not
    lose the turn (the final text still lands in the database, and the SSE view serves it
    from there). Without a cipher (the owner's data key does not open) nothing is written:
    readers then serve the stored outcome."""

    def __init__(self, message_id: object, cipher: OwnerCipher | None = None) -> None:
        self.message_id = message_id
        self.key = stream_key(message_id)
        self.writer = get_writer()
        self.cipher = cipher
        self.sent_any = False

    def delta(self, text: str) -> None:
        """The first delta goes out at once; later ones with the next tick's batch (the
        writer seals each batch as one entry)."""
        if text and self.cipher is not None:
            self.writer.add(self.key, text, now=not self.sent_any, entry=self._delta_entry)
            self.sent_any = True

    def _delta_entry(self, text: str) -> dict[str, str]:
        assert self.cipher is not None
        return seal_entry(self.cipher, self.message_id, EVENT_DELTA, {"text": text})

    def done(
        self, *, status: str, html: str, notice: str = "", facts: dict[str, str] | None = None
    ) -> None:
        data = {"status": status, "html": html, "notice": notice, **(facts or {})}
        self._finish(EVENT_DONE, data)

    def error(
        self, *, message: str, action: str, html: str = "", facts: dict[str, str] | None = None
    ) -> None:
        self._finish(
            EVENT_ERROR, {"message": message, "action": action, "html": html, **(facts or {})}
        )

    def _finish(self, kind: str, data: dict[str, str]) -> None:
        if self.cipher is None:
            return
        self.writer.finish(self.key, seal_entry(self.cipher, self.message_id, kind, data))
