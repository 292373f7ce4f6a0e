from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from accounts.models import User
from chat import turns
from chat.services import conversation_create, message_send
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key
from usage.models import ModelPrice

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_after_a_turn_the_usage_page_shows_its_cost_in_the_chart_the_tables_and_the_csv(
    page, live_server, fake_provider
):
    user = User.objects.create_user(email="spender@example.com", password=PASSWORD)
    ModelPrice.objects.create(
        preset="custom", model="gpt-test", input_per_mtok=2_000_000, output_per_mtok=8_000_000
    )
    key = add_key(user, fake_provider, label="Work key")
    conversation = conversation_create(owner=user, key=key, model="gpt-test")
    fake_provider.script(
        path="/chat/completions",
        text="Priced.",
        usage={"input_tokens": 5000, "output_tokens": 2500},
    )
    _, reply = message_send(conversation=conversation, text="What does this cost?")
    turns.run_turn(str(reply.pk))  # $0.01 + $0.02 = $0.03

    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))
    page.locator(".main-nav").get_by_role("link", name="Usage").click()

    expect(page.locator(".stat").first).to_contain_text("$0.03")
    bar = page.locator("figure.chart svg rect title").first
    expect(bar).to_have_text(re.compile(r"gpt-test \$0\.03"))
    expect(page.get_by_role("row", name=re.compile("gpt-test"))).to_contain_text("$0.03")
    expect(page.get_by_role("row", name=re.compile("Work key"))).to_contain_text("$0.03")
    expect(page.get_by_role("row", name=re.compile("What does this cost"))).to_contain_text("$0.03")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download CSV").click()
    with open(download_info.value.path(), encoding="utf-8") as downloaded:
        csv_text = downloaded.read()
    assert "gpt-test" in csv_text and "0.030000" in csv_text and str(reply.pk) in csv_text
