"""Account security in Chromium: 2FA enrolment and log-in, sudo mode, account deletion.

Every page is also watched for Content Security Policy violations in the console.
"""

from __future__ import annotations

import re
import time

import pytest
from django_otp.oath import TOTP

from accounts.models import TOTPDevice, User
from tests.conftest import PASSWORD
from vault.models import DataKey

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def code_from_seed(seed_text: str, *, offset: int = 0) -> str:
    import base64

    seed = base64.b32decode(seed_text.replace(" ", ""))
    totp = TOTP(seed, 30, 0, 6, 0)
    totp.time = time.time() + offset
    return f"{totp.token():06d}"


@pytest.fixture
def csp_violations(page):
    seen: list[str] = []
    page.on(
        "console",
        lambda message: (
            seen.append(message.text)
            if "Content Security Policy" in message.text or "Refused to" in message.text
            else None
        ),
    )
    return seen


def log_in(page, url, email, password=PASSWORD):
    page.goto(url + "/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_a_user_turns_on_2fa_and_then_needs_a_code_to_log_in(page, live_server, csp_violations):
    User.objects.create_user(email="dana@example.com", password=PASSWORD)
    log_in(page, live_server.url, "dana@example.com")
    page.wait_for_url(re.compile(r"/$"))
    page.get_by_role("link", name="Settings", exact=True).click()
    page.get_by_role("link", name="Turn on two-factor authentication").click()
    assert page.locator(".qr svg").is_visible()
    seed = page.get_by_test_id("totp-seed").inner_text()
    page.get_by_label("Code from the app").fill("000000")
    page.get_by_role("button", name="Turn on").click()
    assert "not right" in page.locator(".errors").inner_text()
    TOTPDevice.objects.update(throttling_failure_count=0, throttling_failure_timestamp=None)
    page.get_by_label("Code from the app").fill(code_from_seed(seed))
    page.get_by_role("button", name="Turn on").click()
    codes = page.get_by_test_id("recovery-codes").locator("code").all_inner_texts()
    assert len(codes) == 10
    page.get_by_role("link", name=re.compile("I saved them")).click()
    assert "On" in page.locator("#two-factor .badge").inner_text()

    page.get_by_role("button", name="Log out").click()
    log_in(page, live_server.url, "dana@example.com")
    page.wait_for_url(re.compile(r"/accounts/login/verify/"))
    page.get_by_label("Authentication code").fill(code_from_seed(seed, offset=30))
    page.get_by_role("button", name="Verify").click()
    page.wait_for_url(re.compile(r"/$"))
    assert "Welcome" in page.locator("h1").inner_text()
    assert csp_violations == []


def test_a_stale_session_confirms_the_password_before_adding_a_key(
    page, live_server, csp_violations
):
    User.objects.create_user(email="erin@example.com", password=PASSWORD)
    log_in(page, live_server.url, "erin@example.com")
    page.wait_for_url(re.compile(r"/$"))
    # Ten minutes later (the session's sudo time is moved back instead of waiting):
    from django.contrib.sessions.models import Session

    from accounts import sudo

    for session in Session.objects.all():
        data = session.get_decoded()
        data[sudo.SESSION_KEY] = time.time() - 1
        Session.objects.filter(pk=session.pk).update(session_data=Session.objects.encode(data))
    page.goto(live_server.url + "/keys/add/")
    page.wait_for_url(re.compile(r"/accounts/confirm/"))
    assert "Confirm it is you" in page.locator("h1").inner_text()
    page.get_by_label("Password").fill("not my password")
    page.get_by_role("button", name="Confirm").click()
    assert "not right" in page.locator(".errors").inner_text()
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Confirm").click()
    page.wait_for_url(re.compile(r"/keys/add/$"))
    assert page.get_by_label("Provider").is_visible()
    assert csp_violations == []


def test_a_user_deletes_their_account(page, live_server, csp_violations):
    user = User.objects.create_user(email="finn@example.com", password=PASSWORD)
    from vault.services import data_key_get_or_create

    data_key_get_or_create(owner=user)
    log_in(page, live_server.url, "finn@example.com")
    page.wait_for_url(re.compile(r"/$"))
    page.goto(live_server.url + "/accounts/settings/")
    page.get_by_role("link", name="Delete my account…").click()
    page.get_by_label("Type your email address to confirm").fill("someone@else.com")
    page.get_by_role("button", name="Delete my account for good").click()
    assert "not your email" in page.locator(".errors").inner_text()
    page.get_by_label("Type your email address to confirm").fill("finn@example.com")
    page.get_by_role("button", name="Delete my account for good").click()
    page.wait_for_url(re.compile(r"/$"))
    assert "deleted" in page.locator(".messages").inner_text()
    assert page.locator(".site-header").get_by_role("link", name="Log in").is_visible()
    assert not User.objects.filter(email="finn@example.com").exists()
    assert not DataKey.objects.filter(owner_id=user.pk).exists()
    assert csp_violations == []


def test_the_main_pages_raise_no_csp_violation(page, live_server, csp_violations):
    User.objects.create_user(email="gus@example.com", password=PASSWORD)
    for path in ("/", "/accounts/login/", "/accounts/signup/"):
        page.goto(live_server.url + path)
    log_in(page, live_server.url, "gus@example.com")
    page.wait_for_url(re.compile(r"/$"))
    for path in (
        "/keys/",
        "/keys/add/",
        "/chat/",
        "/accounts/settings/",
        "/accounts/security-log/",
        "/accounts/export/",
        "/accounts/2fa/setup/",
    ):
        page.goto(live_server.url + path)
        page.wait_for_load_state("networkidle")
    assert csp_violations == []
