"""Markdown to safe HTML, the same while a reply streams and once it is done.

markdown-it-py parses (CommonMark, tables, strikethrough, `$…$`/`$$…$$` and `\\(…\\)`/
`\\[…\\]` math), Pygments highlights fenced code, latex2mathml turns math into MathML, and
nh3 (ammonia) keeps only an allow-list of tags, attributes and classes. Raw HTML in model
output is escaped by markdown-it (html=False); whatever markup is left is filtered by nh3, so
`<script>`, event handlers, inline styles and `javascript:` links are inert. Every path to the
page (the final render, the live render of a streaming reply) ends in `_clean`.

A streaming reply is rendered block by block (`LiveMarkdown`): blocks that can no longer
change are rendered once and sent once; only the last block is rendered again as text
arrives. The blocks joined are what `render_markdown` gives for the whole text, so the swap
to the final HTML when the reply ends moves nothing on the page.
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from typing import Any

import nh3
from defusedxml.ElementTree import fromstring as xml_fromstring
from django.conf import settings
from latex2mathml.converter import convert as latex_to_mathml
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from mdit_py_plugins.dollarmath import dollarmath_plugin
from mdit_py_plugins.texmath import texmath_plugin
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

from usage.selectors import TurnCost
from usage.services import format_cost

_MATHML_TAGS = {
    "math",
    "semantics",
    "annotation",
    "mrow",
    "mi",
    "mn",
    "mo",
    "ms",
    "mtext",
    "mspace",
    "msup",
    "msub",
    "msubsup",
    "mfrac",
    "msqrt",
    "mroot",
    "mover",
    "munder",
    "munderover",
    "mtable",
    "mtr",
    "mtd",
    "mstyle",
    "mpadded",
    "mphantom",
    "menclose",
    "merror",
}
_ALLOWED_TAGS = {
    "p",
    "br",
    "hr",
    "strong",
    "em",
    "del",
    "code",
    "pre",
    "span",
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
    "div",
    *_MATHML_TAGS,
}
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},  # language-<name>, from the fence's info string
    "ol": {"start"},
    "math": {"display"},
    "mo": {"stretchy", "fence", "separator", "lspace", "rspace", "largeop", "movablelimits"},
    "mi": {"mathvariant"},
    "mstyle": {"displaystyle", "scriptlevel", "mathvariant"},
    "mfrac": {"linethickness"},
    "mover": {"accent"},
    "munder": {"accentunder"},
    "mspace": {"width"},
    "mtable": {"columnalign", "rowspacing", "columnspacing"},
    "mtd": {"columnalign"},
    "menclose": {"notation"},
}
# Classes are an allow-list too: Pygments' token classes on spans, the few layout ones here.
_ALLOWED_CLASSES = {
    "span": {"code-lang"} | {name for name in STANDARD_TYPES.values() if name},
    "th": {"align-left", "align-center", "align-right"},
    "td": {"align-left", "align-center", "align-right"},
    "div": {"math-block", "code-block", "code-head"},
}

_formatter = HtmlFormatter(nowrap=True)
# Highlighting a longer block costs more than it is worth to read.
HIGHLIGHT_MAX_CHARS = 20_000


def _highlight(code: str, lang: str, _attrs: str) -> str:
    if not lang or len(code) > HIGHLIGHT_MAX_CHARS:
        return ""
    try:
        lexer = get_lexer_by_name(lang, stripnl=False, ensurenl=False)
    except ClassNotFound:
        return ""
    return pygments_highlight(code, lexer, _formatter)


@functools.lru_cache(maxsize=256)  # the growing block renders the same formulas again
def _math(latex: str, *, block: bool) -> str:
    """MathML for `latex`, or the LaTeX as code when it does not convert. latex2mathml
    copies `\\text{…}` into its output unescaped, so its output is parsed as XML and written
    out again (text escaped) before nh3 sees it; output that is not well-formed is refused."""
    try:
        tree = xml_fromstring(latex_to_mathml(latex, display="block" if block else "inline"))
    except Exception:  # latex2mathml raises many kinds for bad input
        code = f"<code>{escapeHtml(latex)}</code>"
        return f'<div class="math-block">{code}</div>\n' if block else code
    for element in tree.iter():
        element.tag = element.tag.rpartition("}")[2]  # drop the namespace: HTML parses it
    mathml = ElementTree.tostring(tree, encoding="unicode", short_empty_elements=False)
    return f'<div class="math-block">{mathml}</div>\n' if block else mathml


def _math_inline(
    _self: RendererHTML, tokens: Sequence[Token], idx: int, _options: Any, _env: Any
) -> str:
    return _math(tokens[idx].content, block=False)


def _math_block(
    _self: RendererHTML, tokens: Sequence[Token], idx: int, _options: Any, _env: Any
) -> str:
    return _math(tokens[idx].content.strip(), block=True)


def _fence(self: RendererHTML, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    """A fenced block under a header naming its language (the page adds a copy button)."""
    language = tokens[idx].info.strip().split(maxsplit=1)[0] if tokens[idx].info.strip() else ""
    label = f'<span class="code-lang">{escapeHtml(language)}</span>' if language else ""
    code = RendererHTML.fence(self, tokens, idx, options, env)
    return f'<div class="code-block"><div class="code-head">{label}</div>{code}</div>\n'


def _align_classes(state: StateCore) -> None:
    """Table alignment as classes: markdown-it writes `style="text-align:…"`, which the
    Content Security Policy (and nh3) would drop."""
    for token in state.tokens:
        if token.type in ("th_open", "td_open"):
            style = token.attrs.pop("style", None)
            if isinstance(style, str) and style.startswith("text-align:"):
                token.attrSet("class", "align-" + style.removeprefix("text-align:"))


def _parser(*, highlight: bool) -> MarkdownIt:
    options: dict[str, Any] = {"html": False, "linkify": False, "typographer": False}
    if highlight:
        options["highlight"] = _highlight
    md = MarkdownIt("commonmark", options).enable(["table", "strikethrough"])
    # No digits or spaces next to a `$` delimiter: "$5 and $10" stays text.
    dollarmath_plugin(md, allow_space=False, allow_digits=False, double_inline=True)
    texmath_plugin(md, delimiters="brackets")
    for name in ("math_inline", "math_inline_double", "math_single"):
        md.add_render_rule(name, _math_inline)
    for name in ("math_block", "math_block_label", "math_block_eqno"):
        md.add_render_rule(name, _math_block)
    md.add_render_rule("fence", _fence)
    md.core.ruler.push("align_classes", _align_classes)
    return md


_markdown = _parser(highlight=True)
# The last, still growing block of a streaming reply: not highlighted (it is rendered again
# with every batch of text; it is highlighted once it is complete).
_markdown_live = _parser(highlight=False)


def _clean(html: str) -> str:
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        allowed_classes=_ALLOWED_CLASSES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


def render_markdown(text: str) -> str:
    """Sanitised HTML for a message's Markdown text."""
    return _clean(_markdown.render(text))


class LiveMarkdown:
    """A streaming reply's Markdown, rendered as it grows.

    `feed(text)` returns `(committed, tail)`: the HTML of blocks that became complete with
    this text (to append once) and the HTML of the last block (to replace the previous
    tail), or None when the page need not change yet. A block is complete once another
    top-level block starts after it on a whole line. The tail is rendered again at most
    every ten times the time its last rendering took, so one very long block cannot make
    every batch cost its length (`due_in` says when it is due; `flush` renders it); a batch
    that completes a block is always rendered.
    """

    __slots__ = ("_done_at", "_next_tail_at", "_text", "committed_html", "stale", "tail_html")

    def __init__(self) -> None:
        self._text = ""
        self._done_at = 0  # text before this offset is rendered in committed blocks
        self._next_tail_at = 0.0
        self.committed_html: list[str] = []
        self.tail_html = ""
        self.stale = False  # text was added that the last rendering does not show

    @property
    def text(self) -> str:
        return self._text

    def add(self, text: str) -> None:
        """Add text without rendering it (a reader catching up)."""
        self._text += text
        self.stale = self.stale or bool(text)

    def feed(self, text: str, *, force: bool = False) -> tuple[str, str] | None:
        """Add `text` and render what changed; None when the tail is not due yet."""
        self.add(text)
        now = time.perf_counter()
        throttled = not force and now < self._next_tail_at
        if throttled and "\n" not in text:
            return None  # no new whole line: no block can have ended
        pending = self._text[self._done_at :]
        tokens = _markdown_live.parse(pending)
        start_line, first = _last_block(tokens, complete_lines=pending.count("\n"))
        committed = ""
        if start_line > 0:
            # The complete blocks' tokens, rendered with highlighting: the parsers differ
            # only in how they render code.
            committed = _clean(_markdown.renderer.render(tokens[:first], _markdown.options, {}))
            self.committed_html.append(committed)
            self._done_at += _offset_of_line(pending, start_line)
            tokens = tokens[first:]
        elif throttled:
            return None
        options = _markdown_live.options
        self.tail_html = _clean(_markdown_live.renderer.render(tokens, options, {}))
        self.stale = False
        self._next_tail_at = now + 10 * (time.perf_counter() - now)
        return committed, self.tail_html

    def due_in(self) -> float | None:
        """Seconds until the unrendered text is due (None: everything is shown)."""
        return max(0.0, self._next_tail_at - time.perf_counter()) if self.stale else None

    def snapshot(self) -> tuple[str, str]:
        """Everything so far, rendered: all committed blocks and the tail."""
        self.feed("", force=True)
        return "".join(self.committed_html), self.tail_html


def _last_block(tokens: Sequence[Token], *, complete_lines: int) -> tuple[int, int]:
    """The line and token index where the last top-level block that starts on a whole
    line starts ((0, 0) when that is the first block). Only whole lines count: a
    half-written line may yet turn out to continue the block before it ("3" becoming
    "3. Third" in a list, "==" making a paragraph a heading)."""
    line, index = 0, 0
    for position, token in enumerate(tokens):
        if token.level == 0 and token.map and token.nesting >= 0:
            if token.map[0] >= complete_lines:
                break
            line, index = token.map[0], position
    return line, index


def _offset_of_line(text: str, line: int) -> int:
    offset = 0
    for _ in range(line):
        offset = text.index("\n", offset) + 1
    return offset


def pygments_css() -> str:
    """The stylesheet of highlighted code's token colours (static/css/code-pygments-*.css):
    Pygments' "friendly" style, and "github-dark" when the system is dark."""

    def token_rules(style: str) -> str:
        rules = HtmlFormatter(style=style).get_style_defs(".markdown pre").splitlines()
        keep = (rule for rule in rules if rule.startswith(".markdown pre ."))
        return "\n".join(rule for rule in keep if "linenos" not in rule and ".hll" not in rule)

    version = importlib.metadata.version("pygments")
    return (
        f"/* Pygments {version} token colours for code highlighted by chat.rendering: the\n"
        '   "friendly" style in light mode, "github-dark" in dark mode. Generated by\n'
        f"   `python -m chat.rendering --css > static/css/code-pygments-{version}.css`;\n"
        "   do not edit. */\n"
        f"{token_rules('friendly')}\n@media (prefers-color-scheme: dark) {{\n"
        f"{token_rules('github-dark')}\n}}\n"
    )


# The page a failed reply links to, by its error kind (a provider's `invalid_key` or
# `no_credit`, the engine's `no_key` or `budget`): the same live (the error event's `link`)
# and after a reload (`chat.selectors.MessageView.error_link`).
_LINK_FOR_KIND = {"no_key": "keys", "invalid_key": "keys", "no_credit": "keys", "budget": "usage"}


def error_link(error_kind: str) -> str:
    """ "keys", "usage" or "": which page a reply that failed with `error_kind` links to."""
    return _LINK_FOR_KIND.get(error_kind, "")


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
    cost: TurnCost | None = None,
) -> dict[str, str]:
    """The small print of a finished reply, as plain text: the key that served it, and its
    tokens (marked ≈ when estimated: the stream ended before the provider reported them),
    its cost by the usage ledger (`cost`, None when no usage event was read; `format_cost`
    says how it reads: "≈" when estimated, "price unknown" without a price) and time to
    first token. The page renders it; the final event carries it, so a reply
    that finishes live shows what a reload would.

    Then what the request was sent, where it was not the default: its temperature, its
    reasoning effort, and its length limit when that differs from
    `default_max_output_tokens` (the user's setting, or a cap's lower one)."""
    parts = []
    if output_tokens is not None:
        usage = f"{'≈ ' if estimated else ''}{input_tokens or 0} in · {output_tokens} out"
        if cost is not None:
            usage += " · " + format_cost(cost.micro, estimated=cost.estimated)
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


if __name__ == "__main__" and sys.argv[1:] == ["--css"]:
    sys.stdout.write(pygments_css())
