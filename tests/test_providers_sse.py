"""The incremental SSE parser: spec behaviour, and the same events for any split of the bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.sse import ServerSentEvent, SSEDecoder, SSEProtocolError


def decode_all(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def test_it_parses_data_events_and_skips_comments_and_pings() -> None:
    stream = b": keep-alive\n\nevent: ping\ndata: {}\n\ndata: hello\n\n: OPENROUTER PROCESSING\n\n"
    assert decode_all(stream) == [
        ServerSentEvent(event="ping", data="{}"),
        ServerSentEvent(event="message", data="hello"),
    ]


def test_it_joins_multi_line_data_with_newlines() -> None:
    assert decode_all(b"data: first\ndata:second\ndata:  indented\n\n") == [
        ServerSentEvent(data="first\nsecond\n indented")
    ]


def test_it_accepts_crlf_and_bare_cr_line_endings() -> None:
    expected = [ServerSentEvent(event="a", data="1"), ServerSentEvent(event="b", data="2")]
    assert decode_all(b"event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\r") == expected


def test_it_treats_a_crlf_split_across_reads_as_one_line_end() -> None:
    # Were the CR and LF counted as two line ends, "data: 1" would be dispatched early
    # and "data: 2" would become a second event.
    assert decode_all(b"data: 1\r", b"\ndata: 2\r\n\r\n") == [ServerSentEvent(data="1\n2")]


def test_it_decodes_a_utf8_character_split_across_reads() -> None:
    encoded = "data: née 日本 🎉\n\n".encode()
    split = encoded.index("🎉".encode()) + 2
    assert decode_all(encoded[:split], encoded[split:]) == [ServerSentEvent(data="née 日本 🎉")]


def test_it_does_not_dispatch_an_event_without_data_or_an_unterminated_one() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: lonely\n\ndata: cut off") == []
    assert decoder.has_partial_event


def test_it_keeps_the_last_event_id_and_ignores_ids_with_nul() -> None:
    events = decode_all(b"id: 7\ndata: a\n\nid: bad\x00id\ndata: b\n\n")
    assert [event.id for event in events] == ["7", "7"]


def test_it_strips_a_leading_byte_order_mark() -> None:
    assert decode_all(b"\xef\xbb", b"\xbfdata: x\n\n") == [ServerSentEvent(data="x")]


def test_it_replaces_invalid_utf8_instead_of_crashing() -> None:
    assert decode_all(b"data: \xff\xfe\n\n") == [ServerSentEvent(data="\ufffd\ufffd")]


def test_it_refuses_an_endless_line() -> None:
    decoder = SSEDecoder(max_line_bytes=1024)
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"data: " + b"x" * 2048)


# -- the property: any split of a valid stream yields the same events ---------------------------

# Field values: anything but line breaks (which end a field) and NUL (which voids an id).
field_text = st.text(
    alphabet=st.characters(exclude_characters="\r\n\x00", exclude_categories=["Cs"]),
    max_size=12,
)
line_endings = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def event_streams(draw: st.DrawFn) -> tuple[bytes, list[ServerSentEvent]]:
    """A valid event stream as bytes, and the events it must decode to."""
    lines: list[str] = []
    expected: list[ServerSentEvent] = []
    last_id: str | None = None
    if draw(st.booleans()):
        lines.append("\ufeff: bom and a comment")
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.append(":" + draw(field_text))
        event_type = draw(st.none() | st.text(alphabet="abcdefgh_", min_size=1, max_size=8))
        if event_type is not None:
            lines.append(f"event: {event_type}")
        if draw(st.booleans()):
            last_id = draw(field_text)
            lines.append(f"id: {last_id}")
        data_lines = draw(st.lists(field_text, min_size=1, max_size=3))
        lines.extend(f"data: {value}" for value in data_lines)
        lines.append("")
        expected.append(
            ServerSentEvent(event=event_type or "message", data="\n".join(data_lines), id=last_id)
        )
    chunks: list[str] = []
    previous_ending = ""
    for line in lines:
        ending = draw(line_endings)
        if previous_ending == "\r" and line == "" and ending == "\n":
            # "\r" then an empty line ended by "\n" would read as one CRLF: a different stream.
            ending = "\r\n"
        chunks.append(line + ending)
        previous_ending = ending
    return "".join(chunks).encode("utf-8"), expected


@settings(max_examples=300, deadline=None)
@given(stream=event_streams(), data=st.data())
def test_any_split_of_a_valid_stream_yields_the_same_events(
    stream: tuple[bytes, list[ServerSentEvent]], data: st.DataObject
) -> None:
    raw, expected = stream
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    pieces = [raw[start:end] for start, end in zip([0, *cuts], [*cuts, len(raw)], strict=True)]

    assert decode_all(raw) == expected
    assert decode_all(*pieces) == expected
    assert decode_all(*(bytes([byte]) for byte in raw)) == expected
