"""An operator signs in with their second factor, sees a user's turn on the dashboard and
revokes the user's key; the user's security log says so."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from accounts.models import User
from chat import turns
from chat.services import conversation_create, message_send
from keys.models import ProviderKey
from ops.roles import OPERATORS
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key
from tests.operators_helpers import (
    fresh_cache,  # noqa: F401 (a fixture)
    make_staff,
)
from tests.security_helpers import allow_code_reuse, code_for, enrol

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_cache"),
]


def _log_in(page, url, email):
    page.goto(url + "/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_an_operator_sees_a_turn_on_the_dashboard_and_revokes_a_key(
    page, browser, live_server, fake_provider
):
    user = User.objects.create_user(email="user@example.com", password=PASSWORD)
    key = add_key(user, fake_provider, label="Work key")
    conversation = conversation_create(owner=user, key=key, model="gpt-test")
    fake_provider.script(path="/chat/completions", text="Hello from the provider.")
    _, reply = message_send(conversation=conversation, text="Say hello")
    turns.run_turn(str(reply.pk))

    operator = make_staff("op@example.com", role=OPERATORS)
    device, _codes = enrol(operator)
    allow_code_reuse(device)

    refused: list[str] = []  # the Content Security Policy allows no inline script or style
    page.on(
        "console",
        lambda message: refused.append(message.text) if "Refused" in message.text else None,
    )
    _log_in(page, live_server.url, operator.email)
    page.wait_for_url(re.compile(r"/accounts/login/verify/"))
    page.locator("input[name=token]").fill(code_for(device))
    page.get_by_role("button", name="Verify").click()
    page.goto(live_server.url + "/admin/")

    expect(page.locator('[data-figure="turns_today"] .value')).to_have_text("1")
    expect(page.locator('[data-figure="users_active"] .value')).to_have_text("1")
    expect(page.locator("#latency-by-provider")).to_contain_text("custom")
    expect(page.locator('[data-figure="workers"]')).to_be_visible()

    page.locator('[data-figure="turns_today"]').click()
    expect(page.locator("#result_list")).to_contain_text("user@example.com")

    page.goto(live_server.url + "/admin/keys/providerkey/")
    row = page.locator("#result_list tr", has_text="Work key")
    row.locator("input.action-select").check()
    page.locator("select[name=action]").select_option("revoke_keys")
    page.locator("button[name=index]").click()
    expect(page.locator(".messagelist")).to_contain_text("1 key(s) revoked")
    key.refresh_from_db()
    assert key.status == ProviderKey.Status.REVOKED
    assert not refused, refused

    user_page = browser.new_context().new_page()
    _log_in(user_page, live_server.url, user.email)
    user_page.wait_for_url(re.compile(r"/$"))
    user_page.goto(live_server.url + "/accounts/security-log/")
    row = user_page.locator("table.log tr", has_text="Key revoked")
    expect(row).to_contain_text("Work key")
    expect(row).to_contain_text("by an operator")
    expect(row).to_contain_text(re.compile(r"\d{1,2} \w{3} \d{4}, \d{2}:\d{2}"))
    user_page.context.close()
