from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from accounts.models import User
from chat.models import Conversation
from chat.services import conversation_create
from tests.browser.helpers import log_in
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_settings_are_changed_from_the_options_menu_on_a_phone_and_shown_on_the_reply(
    page, asgi_server, fake_provider, celery_worker
):
    user = User.objects.create_user(email="tuner@example.com", password=PASSWORD)
    key = add_key(user, fake_provider, label="Fake")
    # gpt-oss takes a temperature and a reasoning effort.
    conversation = conversation_create(owner=user, key=key, model="gpt-oss-20b")
    page.set_viewport_size({"width": 390, "height": 844})
    log_in(page, asgi_server.url, user.email)
    page.goto(f"{asgi_server.url}/chat/c/{conversation.pk}/")

    page.get_by_text("Options").click()
    page.get_by_role("link", name=re.compile("^Chat settings")).click()
    page.wait_for_url(re.compile(r"/settings/$"))
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the settings page scrolls sideways by {overflow}px"

    page.get_by_label("Temperature").fill("3")
    page.get_by_label("Reasoning effort").select_option("high")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#id_temperature_error")).to_have_text(
        "The temperature must be between 0 and 2."
    )
    expect(page.get_by_label("Temperature")).to_have_attribute("aria-invalid", "true")
    assert Conversation.objects.get(pk=conversation.pk).reasoning_effort == ""

    page.get_by_label("Temperature").fill("0.3")
    page.get_by_label("System prompt").fill("Answer in one line.")
    page.get_by_role("button", name="Save settings").click()
    page.wait_for_url(re.compile(rf"/chat/c/{conversation.pk}/$"))
    expect(page.get_by_text("Settings saved.")).to_be_visible()
    expect(page.locator(".system-prompt")).to_contain_text("System prompt")

    fake_provider.script(text="One line.", path="/chat/completions")
    page.get_by_label("Message").fill("Hello")
    page.get_by_label("Message").press("Enter")
    reply = page.locator("article.message.assistant").last
    expect(reply.locator("[data-role=body]")).to_contain_text("One line.", timeout=15_000)
    expect(reply.locator("[data-role=usage]")).to_contain_text("temp 0.3 · effort high")
    [body] = [r.body for r in fake_provider.requests if r.method == "POST"]
    assert (body["temperature"], body["reasoning_effort"]) == (0.3, "high")
    assert body["messages"][0] == {"role": "system", "content": "Answer in one line."}
    page.get_by_text("Options").click()
    page.reload()
    expect(
        page.locator("article.message.assistant").last.locator("[data-role=usage]")
    ).to_contain_text("temp 0.3 · effort high")
