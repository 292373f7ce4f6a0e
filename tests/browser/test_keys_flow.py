from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from accounts.models import User
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SECRET = "sk-browser-test-key-0123456789abcdQRST"


def log_in(page, live_server, email):
    User.objects.create_user(email=email, password=PASSWORD)
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))


def test_a_user_adds_a_key_and_sees_it_verified_showing_only_its_fingerprint(
    page, live_server, fake_provider, celery_worker
):
    fake_provider.accept_only_keys(SECRET)
    log_in(page, live_server, "keys@example.com")
    page.locator(".main-nav").get_by_role("link", name="Keys").click()
    expect(page.get_by_text("No keys yet")).to_be_visible()
    page.get_by_role("link", name="Add your first key").click()

    page.get_by_label("Provider").select_option("custom")
    base_url = page.get_by_label("Base URL")
    expect(base_url).to_be_visible()  # swapped in by htmx for a custom endpoint
    base_url.fill(fake_provider.base_url("openai"))
    page.get_by_label("API key").fill("sk-has a space")
    page.get_by_role("button", name="Save and check the key").click()
    expect(page.get_by_text("spaces or line breaks")).to_be_visible()
    assert page.get_by_label("API key").input_value() == ""  # never rendered back

    page.get_by_label("API key").fill(SECRET)
    page.get_by_label("Label").fill("My fake key")
    page.get_by_role("button", name="Save and check the key").click()

    expect(page.locator("h1")).to_have_text("My fake key")
    # The badge polls itself (htmx) until the worker has checked the key.
    expect(page.locator(".key-status .badge")).to_have_text("Valid", timeout=20_000)
    expect(page.get_by_text("sk-…QRST").first).to_be_visible()
    assert SECRET not in page.content()

    page.locator(".main-nav").get_by_role("link", name="Keys").click()
    row = page.get_by_role("row", name=re.compile("My fake key"))
    expect(row).to_contain_text("sk-…QRST")
    expect(row).to_contain_text("Valid")
    assert SECRET not in page.content()
    assert {request.api_key for request in fake_provider.requests} == {SECRET}


def test_the_provider_picker_shows_a_fixed_endpoint_for_vendors(page, live_server):
    log_in(page, live_server, "picker@example.com")
    page.goto(live_server.url + "/keys/add/")
    page.get_by_label("Provider").select_option("anthropic")
    expect(page.get_by_text("https://api.anthropic.com")).to_be_visible()
    expect(page.get_by_label("Base URL")).to_have_count(0)
