from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import User
from chat.models import PURPOSE_MESSAGE, PURPOSE_TITLE, Conversation, Message
from tests.browser.helpers import log_in
from tests.conftest import PASSWORD
from vault.services import OwnerCipher

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _chat(owner, title, *texts):
    cipher = OwnerCipher(owner)
    conversation = Conversation(owner=owner, preset="custom", model="gpt-test")
    conversation.sealed_title = cipher.seal(PURPOSE_TITLE, conversation.pk, title)
    conversation.save()
    start = timezone.now() - timedelta(minutes=5)
    made = []
    for index, text in enumerate(texts):
        message = Message(
            conversation=conversation,
            owner=owner,
            role="user" if index % 2 == 0 else "assistant",
            created_at=start + timedelta(seconds=index),
        )
        message.sealed_content = cipher.seal(PURPOSE_MESSAGE, message.pk, text)
        message.save()
        made.append(message)
    return conversation, made


@pytest.mark.parametrize("width", [1280, 390])
def test_typing_a_word_from_a_reply_shows_it_and_a_click_opens_the_message(
    page, asgi_server, width
):
    page.set_viewport_size({"width": width, "height": 900})
    user = User.objects.create_user(email="finder@example.com", password=PASSWORD)
    fillers = [f"Filler line {i} of an earlier message." for i in range(30)]
    long_title = "Garden notes on what grows where, and when, in a small sunny yard"
    target, made = _chat(
        user, long_title, "What should I plant?", *fillers, "Plant <b>heliotrope</b> in May."
    )
    reply = made[-1]
    current, _ = _chat(user, "Open chat", "Something else", "Another answer")
    log_in(page, asgi_server.url, user.email)
    page.goto(f"{asgi_server.url}/chat/c/{current.pk}/")
    expect(page.locator(".sidebar-group").first).to_have_text("Today")
    if width < 760:  # the list is a drawer on a phone
        page.get_by_role("link", name="Chats").click()

    page.get_by_label("Search conversations").press_sequentially("helio", delay=40)  # no Enter
    result = page.locator(".search-results a").first
    expect(result).to_contain_text("Garden notes")
    expect(result.locator("mark")).to_have_text("helio")
    expect(result.locator(".snippet")).to_contain_text("Plant <b>heliotrope</b> in May.")
    assert page.url.endswith(f"/chat/c/{current.pk}/")  # the open chat stayed open
    expect(page.locator("#chat-title")).to_have_text("Open chat")
    if width <= 400:
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        box = result.bounding_box()
        assert box is not None and box["height"] >= 44

    result.click()
    page.wait_for_url(re.compile(rf"/chat/c/{target.pk}/#message-{reply.pk}$"))
    expect(page.locator(f"#message-{reply.pk}")).to_be_in_viewport()

    if width < 760:
        page.get_by_role("link", name="Chats").click()
    page.get_by_label("Search conversations").fill("")
    expect(page.locator(".search-results")).to_have_count(0)
    expect(page.locator(".sidebar-group").first).to_have_text("Today")


def test_the_row_menu_pins_and_renames_inline(page, asgi_server):
    page.set_viewport_size({"width": 390, "height": 900})
    user = User.objects.create_user(email="pinner@example.com", password=PASSWORD)
    conversation, _ = _chat(user, "Pin me", "hello", "hi")
    log_in(page, asgi_server.url, user.email)
    page.goto(f"{asgi_server.url}/chat/")
    page.get_by_role("link", name="Chats").click()  # the list is a drawer on a phone
    menu = page.get_by_label("Options for Pin me")
    box = menu.bounding_box()
    assert box is not None and box["height"] >= 44 and box["width"] >= 44
    menu.click()
    page.get_by_role("button", name="Pin", exact=True).click()
    expect(page.locator(".sidebar-group").first).to_have_text("Pinned")
    page.get_by_label("Options for Pin me").click()
    page.get_by_label("Title").fill("Renamed inline")
    page.get_by_role("button", name="Rename").click()
    expect(page.locator(f"#sidebar-title-{conversation.pk}")).to_have_text("Renamed inline")
    assert page.url.endswith("/chat/#conversations")  # back with the list open
