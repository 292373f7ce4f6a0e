"""Edit, versions and regenerate in a real browser, at desktop and phone widths."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from accounts.models import User
from chat.models import Message
from chat.services import conversation_create
from tests.browser.helpers import chat_of, log_in
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHAT = "/chat/completions"


@pytest.fixture(params=[1280, 390], ids=["desktop", "phone"])
def chat_page(request, page, asgi_server, fake_provider, celery_worker):
    page.set_viewport_size({"width": request.param, "height": 900})
    return chat_of(page, asgi_server.url, fake_provider, "brancher@example.com")


def user_messages(page):
    return page.locator("article.message.user")


def replies(page):
    return page.locator("article.message.assistant")


def finished(reply):
    expect(reply.get_by_role("button", name="Regenerate")).to_be_visible(timeout=15_000)


def sent_texts(fake) -> list[str]:
    body = [r for r in fake.requests if r.method == "POST"][-1].body
    return [m["content"] for m in body["messages"] if m["role"] != "system"]


def big_enough(locator) -> None:
    box = locator.bounding_box()
    assert box is not None and box["width"] >= 44 and box["height"] >= 44, box


def test_edit_makes_a_branch_versions_switch_and_a_reload_keeps_the_branch(
    chat_page, fake_provider
):
    page = chat_page
    narrow = page.viewport_size["width"] < 600
    fake_provider.script(text="A strawberry", path=CHAT)
    page.get_by_label("Message").fill("Name a red fruit")
    page.get_by_label("Message").press("Enter")
    finished(replies(page).last)
    expect(replies(page).last.locator("[data-role=body]")).to_have_text("A strawberry")

    # Edit opens in place of the text; Cancel puts things back as they were.
    question = user_messages(page).first
    question.get_by_text("Edit", exact=True).click()
    box = question.get_by_label("Edited text")
    expect(box).to_be_focused()
    expect(question.locator(".body")).to_be_hidden()
    if narrow:
        big_enough(question.get_by_role("button", name="Save"))
        big_enough(question.get_by_role("link", name="Cancel"))
    box.fill("something else")
    question.get_by_role("link", name="Cancel").click()
    expect(box).to_be_hidden()
    expect(question.locator(".body")).to_have_text("Name a red fruit")

    # Save: a new branch, answered without the old one in its context.
    fake_provider.script(text="A lime", path=CHAT)
    question.get_by_text("Edit", exact=True).click()
    expect(box).to_have_value("Name a red fruit")
    box.fill("Name a green fruit")
    question.get_by_role("button", name="Save").click()
    expect(user_messages(page)).to_have_count(1)
    expect(user_messages(page).first.locator(".body")).to_have_text("Name a green fruit")
    expect(replies(page).last.locator("[data-role=body]")).to_have_text("A lime", timeout=15_000)
    finished(replies(page).last)
    assert sent_texts(fake_provider) == ["Name a green fruit"]
    question = user_messages(page).first
    expect(question.locator(".version-label")).to_have_text("2/2")
    if narrow:
        big_enough(question.get_by_role("button", name="Previous version"))
        big_enough(question.get_by_text("Edit", exact=True))
    expect(question.get_by_role("button", name="Next version")).to_be_disabled()

    # "Previous version" goes back to the first version and its reply.
    question.get_by_role("button", name="Previous version").click()
    expect(user_messages(page).first.locator(".body")).to_have_text("Name a red fruit")
    expect(replies(page).last.locator("[data-role=body]")).to_have_text("A strawberry")
    expect(user_messages(page).first.locator(".version-label")).to_have_text("1/2")
    page.reload()
    expect(user_messages(page).first.locator(".body")).to_have_text("Name a red fruit")
    expect(replies(page).last.locator("[data-role=body]")).to_have_text("A strawberry")

    # "Next version": forward again; the reload keeps that branch too.
    user_messages(page).first.get_by_role("button", name="Next version").click()
    expect(user_messages(page).first.locator(".body")).to_have_text("Name a green fruit")
    page.reload()
    expect(user_messages(page).first.locator(".body")).to_have_text("Name a green fruit")
    expect(replies(page).last.locator("[data-role=body]")).to_have_text("A lime")
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]


def test_regenerate_keeps_both_versions(chat_page, fake_provider):
    page = chat_page
    fake_provider.script(text="First take", path=CHAT)
    page.get_by_label("Message").fill("Say something")
    page.get_by_label("Message").press("Enter")
    finished(replies(page).last)
    fake_provider.script(text="Second take", path=CHAT)
    page.get_by_label("Message").fill("Another thing")
    page.get_by_label("Message").press("Enter")
    expect(replies(page)).to_have_count(2)
    finished(replies(page).last)
    # Every finished reply of the branch can be regenerated, not only the last.
    finished(replies(page).first)

    fake_provider.script(text="Second take, again", path=CHAT)
    replies(page).last.get_by_role("button", name="Regenerate").click()
    reply = replies(page).last
    expect(reply.locator("[data-role=body]")).to_have_text("Second take, again", timeout=15_000)
    finished(reply)
    expect(reply.locator(".version-label")).to_have_text("2/2")
    assert sent_texts(fake_provider) == ["Say something", "First take", "Another thing"]

    reply.get_by_role("button", name="Previous version").click()
    expect(replies(page).last.locator("[data-role=body]")).to_have_text("Second take")
    expect(replies(page).last.locator(".version-label")).to_have_text("1/2")
    page.reload()
    expect(replies(page).last.locator("[data-role=body]")).to_have_text("Second take")
    assert Message.objects.filter(role="assistant").count() == 3
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]


def test_edit_and_versions_work_without_javascript(
    browser, asgi_server, fake_provider, celery_worker
):
    from chat import services
    from tests.chat_helpers import wait_final

    user = User.objects.create_user(email="nojs@example.com", password=PASSWORD)
    key = add_key(user, fake_provider, label="Fake")
    conversation = conversation_create(owner=user, key=key, model="gpt-test")
    fake_provider.script(text="Paris", path=CHAT)
    _, reply = services.message_send(conversation=conversation, text="Capital of France?")
    wait_final(reply)
    context = browser.new_context(java_script_enabled=False, viewport={"width": 390, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        log_in(page, asgi_server.url, user.email)
        page.goto(f"{asgi_server.url}/chat/c/{conversation.pk}/")

        fake_provider.script(text="Rome", path=CHAT)
        question = user_messages(page).first
        question.get_by_text("Edit", exact=True).click()  # a <details>: opens without JS
        question.get_by_label("Edited text").fill("Capital of Italy?")
        question.get_by_role("button", name="Save").click()
        expect(user_messages(page).first.locator(".body")).to_have_text("Capital of Italy?")
        edited_reply = Message.objects.exclude(pk=reply.pk).get(role="assistant")
        wait_final(edited_reply)
        page.reload()
        expect(replies(page).last.locator("[data-role=body]")).to_have_text("Rome")
        user_messages(page).first.get_by_role("button", name="Previous version").click()
        expect(user_messages(page).first.locator(".body")).to_have_text("Capital of France?")
        expect(replies(page).last.locator("[data-role=body]")).to_have_text("Paris")
    finally:
        context.close()


def test_text_typed_as_the_edit_box_opens_replaces_the_old_text(chat_page, fake_provider):
    """The box's `toggle` handler runs a task after the click; by then the user (or a test's
    `fill`) may have selected the old text to type over it: the caret must stay put."""
    page = chat_page
    fake_provider.script(text="A strawberry", path=CHAT)
    page.get_by_label("Message").fill("Name a red fruit")
    page.get_by_label("Message").press("Enter")
    finished(replies(page).last)
    # Open, focus and select all at once, before the toggle event is handled...
    page.evaluate(
        """() => {
          const details = document.querySelector("article.message.user details.edit-message");
          details.open = true;
          const box = details.querySelector("textarea");
          box.focus();
          box.select();
        }"""
    )
    page.keyboard.insert_text("Name a green fruit")  # ...then type over the selection.
    expect(user_messages(page).first.get_by_label("Edited text")).to_have_value(
        "Name a green fruit"
    )
