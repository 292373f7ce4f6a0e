"""Markdown while a reply streams and once it is done: one sanitising policy, one layout.

`LiveMarkdown` renders a streaming reply block by block; joined, its blocks must be exactly
what `render_markdown` gives for the whole text (else the page jumps when the final HTML is
swapped in), and every piece it sends must pass the same hostile corpus as the final render.
"""

from __future__ import annotations

import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from chat import rendering
from chat.rendering import LiveMarkdown, render_markdown

DOCUMENTS = [
    "# Plan\n\nHere is **bold**, `code` and $e^{i\\pi}+1=0$.\n\n1. First\n2. Second\n\n"
    "   continued\n\n3. Third\n\nAfter the list.\n",
    "| name | cost |\n|:-----|-----:|\n| a | 1 |\n| b | 22 |\n\nText after.\n",
    "```python\ndef f(x):\n\n    return x * 2\n```\n\n> quoted\nlazy\n\n$$\n\\frac{a}{b}\n$$\n",
    "Heading\n=======\n\nPara one\nstill one\n\n- a\n  - nested\n- b\n\n---\n\nEnd",
    "Unclosed fence at the end:\n\n```js\nconst x = 1;\n",
    "Indented code:\n\n    x = 1\n    y = 2\n\nthen \\[ x^2 \\] inline, and $5 or $10 costs.\n",
    "* [link](https://example.com) and ~~struck~~\n* <b>raw html</b>\n\n1) one\n2) two\n",
    "Many\n\n\n\nblank\n\nlines\n\n\n",
]

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    '<a href="javascript:alert(1)">x</a>',
    "<iframe src=https://evil.example></iframe>",
    '<div style="background:url(javascript:alert(1))">x</div>',
    "$\\text{</mtext><img src=x onerror=alert(1)>}$",
    "$$\n\\text{<script>alert(1)</script>}\n$$",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    "| a |\n|---|\n| <svg onload=alert(1)> |",
    '```"><script>alert(1)</script>\nx\n```',
]


def streamed(text: str, seed: int, *, force: bool = True) -> tuple[list[str], LiveMarkdown]:
    """Feed `text` in random pieces; every piece of HTML sent, and the renderer."""
    rng = random.Random(seed)
    live = LiveMarkdown()
    sent: list[str] = []
    at = 0
    while at < len(text):
        size = rng.randint(1, 14)
        out = live.feed(text[at : at + size], force=force)
        at += size
        if out is not None:
            sent.extend(out)
    return sent, live


def unhighlighted(html: str) -> str:
    """Without Pygments' token spans: the growing block is highlighted only once it is
    complete (colour only: the layout is the same)."""
    return re.sub(r'</?span(?: class="[a-z0-9]+")?>', "", html)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_the_streamed_blocks_joined_are_the_final_html(document):
    final = render_markdown(document)
    for seed in range(25):
        _, live = streamed(document, seed)
        committed, tail = live.snapshot()
        assert unhighlighted(committed + tail) == unhighlighted(final), seed
        assert committed == final[: len(committed)], seed  # complete blocks: highlighted too


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, attrs))


def assert_inert(html: str) -> None:
    parser = Elements()
    parser.feed(html)
    for tag, attrs in parser.found:
        assert tag in rendering._ALLOWED_TAGS, tag
        assert tag not in {"script", "img", "iframe", "style", "svg", "mglyph"}, tag
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            assert name != "style", tag
            assert "javascript:" not in (value or "").lower(), (tag, name, value)
            if name == "class" and tag != "code":
                allowed = rendering._ALLOWED_CLASSES.get(tag, set())
                assert set((value or "").split()) <= allowed, (tag, value)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_markdown_is_inert_on_the_final_and_the_streaming_path(hostile):
    document = f"Hello\n\n{hostile}\n\n```html\n{hostile}\n```\n\n- {hostile}\n\n> {hostile}\n"
    assert_inert(render_markdown(document))
    for seed in range(10):
        sent, live = streamed(document, seed)
        for html in sent:
            assert_inert(html)
        assert_inert("".join(live.snapshot()))


def test_code_is_highlighted_under_a_header_naming_its_language():
    html = render_markdown("```python\ndef f():\n    return 1\n```")
    assert '<div class="code-head"><span class="code-lang">python</span></div>' in html
    assert '<span class="k">def</span>' in html
    assert '<code class="language-python">' in html
    # An unknown language: a header, the code as text, no highlighting.
    plain = render_markdown("```nosuchlang\n<b>x</b>\n```")
    assert '<span class="code-lang">nosuchlang</span>' in plain
    assert "&lt;b&gt;x&lt;/b&gt;" in plain and '<span class="k">' not in plain


def test_the_growing_block_is_not_highlighted_until_it_is_complete():
    live = LiveMarkdown()
    committed, tail = live.feed("```python\ndef f():\n", force=True)  # type: ignore[misc]
    assert committed == "" and "def f():" in tail and '<span class="k">' not in tail
    committed, _ = live.feed("```\n\nAfter.\n", force=True)  # type: ignore[misc]
    assert '<span class="k">def</span>' in committed


def test_table_alignment_is_kept_as_classes_not_styles():
    html = render_markdown("| a | b | c |\n|:--|:-:|--:|\n| 1 | 2 | 3 |")
    assert '<th class="align-left">a</th>' in html
    assert '<th class="align-center">b</th>' in html
    assert '<td class="align-right">3</td>' in html
    assert "style=" not in html


def test_math_becomes_mathml_and_prices_stay_text():
    html = render_markdown("Euler: $e^{i\\pi}+1=0$, \\(x^2\\) and\n\n$$\n\\frac{a}{b}\n$$")
    assert html.count("<math") == 3
    assert '<math display="block">' in html and "<mfrac>" in html
    assert "<p>It costs $5 or $10.</p>" in render_markdown("It costs $5 or $10.")
    # LaTeX that does not convert stays readable, as code.
    assert "<code>\\frac{</code>" in render_markdown("bad $\\frac{$ here")


def test_a_long_block_is_not_rendered_again_for_every_piece():
    """The tail is put off while rendering it again would cost more than a tenth of the
    time since the last rendering (a clock that stands still: nothing more is due)."""
    live = LiveMarkdown()
    live.feed("```\n" + "line\n" * 3000, force=True)
    live._next_tail_at = float("inf")  # as if the last rendering had cost for ever
    assert live.feed("more") is None
    assert live.stale and live.due_in() is not None
    _, tail = live.snapshot()
    assert "more" in tail and not live.stale and live.due_in() is None


def test_the_code_stylesheet_is_the_one_pygments_generates():
    import importlib.metadata

    version = importlib.metadata.version("pygments")
    path = Path(__file__).parent.parent / "static" / "css" / f"code-pygments-{version}.css"
    assert path.read_text() == rendering.pygments_css()
