from __future__ import annotations

import re

import pytest

from tests.conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_newcomer_signs_up_logs_out_and_logs_back_in(page, live_server):
    page.goto(live_server.url)
    page.get_by_role("link", name="Create a free account").click()

    page.get_by_label("Email").fill("newcomer@example.com")
    page.get_by_label("Password", exact=True).fill("short")
    page.get_by_label("Confirm password").fill("short")
    page.get_by_role("button", name="Create account").click()
    assert page.locator(".field.has-error").first.is_visible()
    assert "too short" in page.locator("#id_password1_errors").inner_text()

    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Confirm password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(r"/$"))
    assert "Welcome" in page.locator("h1").inner_text()
    assert page.get_by_role("link", name="Settings", exact=True).is_visible()

    page.get_by_role("button", name="Log out").click()
    header = page.locator(".site-header")
    assert header.get_by_role("link", name="Log in").is_visible()

    header.get_by_role("link", name="Log in").click()
    page.get_by_label("Email").fill("NEWCOMER@example.com")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Log in").click()
    assert "do not match an account" in page.locator(".alert.error").inner_text()

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/$"))
    assert "Welcome" in page.locator("h1").inner_text()


def test_the_pages_fit_a_phone_screen(page, live_server):
    page.set_viewport_size({"width": 375, "height": 740})
    for path in ("/", "/accounts/signup/", "/accounts/login/"):
        page.goto(live_server.url + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px"
