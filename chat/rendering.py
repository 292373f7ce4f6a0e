"""Markdown to safe HTML: markdown-it-py renders, nh3 (ammonia) keeps only harmless markup.

Raw HTML in model output is escaped by markdown-it (html=False) and whatever markup is left is
filtered by nh3 with an allow-list, so `<script>`, event handlers and `javascript:` links are
inert.
"""

from __future__ import annotations

from typing import Any

import nh3
from django.conf import settings
from markdown_it import MarkdownIt

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
_markdown.enable("table").enable("strikethrough")

_ALLOWED_TAGS = {
    "p",
    "br",
    "hr",
    "strong",
    "em",
    "del",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "a",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "th": {"align"},
    "td": {"align"},
    "ol": {"start"},
}


def render_markdown(text: str) -> str:
    """Sanitised HTML for a message's Markdown text."""
    html = _markdown.render(text)
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def turn_facts(
    *,
    key_label: str,
    input_tokens: int | None,
    output_tokens: int | None,
    ttft_ms: int | None,
    estimated: bool = False,
    temperature: float | None = None,
    max_output_tokens: int | None = None,
    reasoning_effort: str = "",
    default_max_output_tokens: int | None = None,
) -> dict[str, str]:
    """The small print of a finished reply, as plain text: the key that served it, and its
    tokens (marked ≈ when estimated: the stream ended before the provider reported them)
    and time to first token. The page renders it; the final event carries it, so a reply
    that finishes live shows what a reload would.

    Then what the request was sent, where it was not the default: its temperature, its
    reasoning effort, and its length limit when that differs from
    `default_max_output_tokens` (the user's setting, or a cap's lower one)."""
    parts = []
    if output_tokens is not None:
        usage = f"{'≈ ' if estimated else ''}{input_tokens or 0} in · {output_tokens} out"
        if ttft_ms is not None:
            usage += f" · first token {ttft_ms} ms"
        parts.append(usage)
    if temperature is not None:
        parts.append(f"temp {temperature:g}")
    if reasoning_effort:
        parts.append(f"effort {reasoning_effort}")
    if max_output_tokens is not None and max_output_tokens != default_max_output_tokens:
        parts.append(f"max {max_output_tokens:,} tokens")
    return {"via": f"via {key_label}" if key_label else "", "usage": " · ".join(parts)}


def sent_facts(sent: dict[str, object]) -> dict[str, Any]:
    """`turn_facts`' arguments for what a reply's request was sent (a Message's
    `temperature`, `max_output_tokens` and `reasoning_effort`, or the same as a dict)."""
    return {
        "temperature": sent.get("temperature"),
        "max_output_tokens": sent.get("max_output_tokens"),
        "reasoning_effort": sent.get("reasoning_effort") or "",
        "default_max_output_tokens": settings.BYOK_MAX_OUTPUT_TOKENS,
    }
