"""A reply reads as formatted text while it streams, and does not move when it ends."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_chat_flow import chat_page  # noqa: F401  (a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

REPLY = (
    "**Bold start** and `inline code`, then a list:\n\n"
    "1. first item\n2. second item\n\n"
    "| item | cost |\n|:--|--:|\n| tea | 3 |\n\n"
    "```python\ndef answer():\n    return 42\n```\n\n"
    "Euler: $e^{i\\pi}+1=0$\n\n" + " ".join(f"word{i}" for i in range(120))
)


@pytest.mark.parametrize("width", [1280, 390])
def test_markdown_is_formatted_while_the_reply_streams(chat_page, fake_provider, width):  # noqa: F811
    page = chat_page
    page.set_viewport_size({"width": width, "height": 844 if width == 390 else 800})
    fake_provider.script(text=REPLY, tokens_per_second=30, path="/chat/completions")
    page.get_by_label("Message").fill("Show me Markdown")
    page.get_by_label("Message").press("Enter")

    reply = page.locator("article.message.assistant").last
    body = reply.locator("[data-role=body]")
    # Mid-stream: formatted, never the raw syntax.
    expect(body.locator("strong")).to_have_text("Bold start", timeout=15_000)
    expect(body.locator("ol li")).to_have_count(2, timeout=15_000)
    expect(body.locator("td.align-right")).to_have_text("3", timeout=15_000)
    expect(body.locator(".code-block .code-lang")).to_have_text("python", timeout=15_000)
    expect(body.locator("math")).to_have_count(1, timeout=15_000)
    assert reply.get_attribute("data-stream-url"), "the reply had already finished"
    assert "**" not in body.inner_text() and "```" not in body.inner_text()
    expect(body.locator(".code-block .copy")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= width

    expect(reply.get_by_role("button", name="Regenerate")).to_be_visible(timeout=20_000)
    expect(body).to_contain_text("word119")
    expect(body.locator(".code-block .k").first).to_have_text("def")  # highlighted once complete
    assert page.evaluate("document.documentElement.scrollWidth") <= width
