"""Markdown to safe HTML: markdown-it-py renders, nh3 (ammonia) keeps only harmless markup.

Raw HTML in model output is escaped by markdown-it (html=False) and whatever markup is left is
filtered by nh3 with an allow-list, so `<script>`, event handlers and `javascript:` links are
inert.
"""

from __future__ import annotations

import nh3
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
) -> dict[str, str]:
    """The small print of a finished reply, as plain text: the key that served it, and its
    tokens (marked ≈ when estimated: the stream ended before the provider reported them)
    and time to first token. The page renders it; the final event carries it, so a reply
    that finishes live shows what a reload would."""
    usage = ""
    if output_tokens is not None:
        usage = f"{'≈ ' if estimated else ''}{input_tokens or 0} in · {output_tokens} out"
        if ttft_ms is not None:
            usage += f" · first token {ttft_ms} ms"
    return {"via": f"via {key_label}" if key_label else "", "usage": usage}
