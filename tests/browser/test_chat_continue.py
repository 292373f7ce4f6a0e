"""Continue in the browser: stop a slow reply, press Continue, and the same reply grows
until it is done (desktop and phone widths)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from chat.models import Message
from tests.browser.helpers import chat_of

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHAT = "/chat/completions"


@pytest.fixture(params=[1280, 390], ids=["desktop", "phone"])
def chat_page(request, page, asgi_server, fake_provider, celery_worker):
    width = request.param
    page.set_viewport_size({"width": width, "height": 844 if width == 390 else 800})
    return chat_of(page, asgi_server.url, fake_provider, "continuer@example.com")


def test_a_stopped_reply_continues_as_the_same_reply(chat_page, fake_provider):
    page = chat_page
    first = [f"alpha{i}" for i in range(300)]
    fake_provider.script(text=" ".join(first), tokens_per_second=15, path=CHAT)
    page.get_by_label("Message").fill("Write at length")
    page.get_by_label("Message").press("Enter")
    reply = page.locator("article.message.assistant").last
    body = reply.locator("[data-role=body]")
    expect(body).to_contain_text("alpha3", timeout=10_000)
    reply.get_by_role("button", name="Stop").click()
    expect(reply.locator("[data-role=state]")).to_have_text("Stopped", timeout=5_000)

    # Continue appears on the stopped reply as soon as it ends, without a reload.
    button = reply.get_by_role("button", name="Continue")
    expect(button).to_be_visible()
    kept = body.inner_text().split()
    assert kept and kept[-1] != "alpha299"

    rest = " ".join(f"omega{i}" for i in range(30)) + " THE-END."
    fake_provider.script(text=rest, tokens_per_second=40, path=CHAT)
    button.click()
    replies = page.locator("article.message.assistant")
    grown = replies.last.locator("[data-role=body]")
    expect(grown).to_contain_text("omega3", timeout=10_000)
    expect(grown).to_contain_text("THE-END.", timeout=15_000)
    expect(replies).to_have_count(1)  # one reply, grown
    text = grown.inner_text()
    assert text.startswith("alpha0 alpha1") and text.count("alpha0 ") == 1
    assert " ".join(kept) + " omega0 omega1" in text  # joined where it stopped
    expect(replies.last.get_by_role("button", name="Regenerate")).to_be_visible()
    expect(replies.last.get_by_role("button", name="Continue")).to_have_count(0)
    expect(replies.last.locator("[data-role=state]")).to_have_text("")
    expect(replies.last.locator("[data-role=usage]")).to_contain_text("out")
    expect(page.get_by_label("Message")).to_be_enabled()

    statuses = sorted(Message.objects.filter(role="assistant").values_list("status", flat=True))
    assert statuses == ["done", "stopped"]

    page.reload()  # a reload shows the same one reply
    replies = page.locator("article.message.assistant")
    expect(replies).to_have_count(1)
    expect(replies.last.locator("[data-role=body]")).to_contain_text("alpha0 alpha1")
    expect(replies.last.locator("[data-role=body]")).to_contain_text("THE-END.")
