"""Sudo mode: password (and second factor) again within ten minutes before dangerous changes."""

from __future__ import annotations

import re
import time

import pytest
from django.test import RequestFactory
from django.urls import reverse

from accounts import sudo
from accounts.models import AuditEvent
from keys.models import ProviderKey
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key
from tests.security_helpers import expire_sudo

pytestmark = pytest.mark.django_db

SUDO = reverse("accounts:sudo")


@pytest.fixture
def alices_key(alice):
    return add_key(alice, None, preset="openai")


def guarded_urls(key: ProviderKey) -> list[tuple[str, str]]:
    """Every action the issue names, as (method, url)."""
    return [
        ("get", reverse("keys:add")),
        ("post", reverse("keys:add")),
        ("get", reverse("keys:replace", args=[key.pk])),
        ("post", reverse("keys:replace", args=[key.pk])),
        ("post", reverse("keys:revoke", args=[key.pk])),
        ("post", reverse("keys:delete", args=[key.pk])),
        ("get", reverse("accounts:two_factor_setup")),
        ("post", reverse("accounts:two_factor_disable")),
        ("post", reverse("accounts:recovery_codes")),
        ("get", reverse("accounts:email_change")),
        ("post", reverse("accounts:email_change")),
        ("get", reverse("privacy:delete")),
        ("post", reverse("privacy:delete")),
    ]


def test_every_dangerous_action_needs_a_fresh_password(alice_client, alice, alices_key):
    expire_sudo(alice_client)
    for method, url in guarded_urls(alices_key):
        response = getattr(alice_client, method)(url, {"secret": "sk-x", "email": "e@x.io"})
        assert response.status_code == 302, (method, url)
        assert response["Location"].startswith(SUDO), (method, url)
    alices_key.refresh_from_db()
    assert alices_key.status != ProviderKey.Status.REVOKED
    alice.refresh_from_db()
    assert alice.email == "alice@example.com"


def test_confirming_the_password_returns_to_the_page(alice_client, alice):
    expire_sudo(alice_client)
    add = reverse("keys:add")
    start = alice_client.get(add)
    assert start["Location"] == f"{SUDO}?next=%2Fkeys%2Fadd%2F"

    wrong = alice_client.post(start["Location"], {"password": "not my password"})
    assert wrong.status_code == 400
    assert AuditEvent.objects.filter(owner=alice, action="sudo.failed").exists()

    ok = alice_client.post(start["Location"], {"password": PASSWORD})
    assert ok.status_code == 302 and ok["Location"] == add
    assert alice_client.get(add).status_code == 200
    assert AuditEvent.objects.filter(owner=alice, action="sudo.confirmed").exists()


def test_sudo_mode_ends_after_ten_minutes(alice_client):
    assert alice_client.get(reverse("keys:add")).status_code == 200  # fresh log-in
    session = alice_client.session
    session[sudo.SESSION_KEY] = time.time() + 1
    session.save()
    assert alice_client.get(reverse("keys:add")).status_code == 200
    session[sudo.SESSION_KEY] = time.time() - 1
    session.save()
    assert alice_client.get(reverse("keys:add")).status_code == 302


def test_sudo_granted_lasts_ten_minutes(alice):
    request = RequestFactory().get("/")
    request.user = alice
    request.session = {}  # type: ignore[assignment]
    sudo.sudo_grant(request)
    assert sudo.sudo_is_active(request)
    assert 590 < request.session[sudo.SESSION_KEY] - time.time() <= 600


def test_sudo_of_one_user_does_not_carry_over_to_another(alice, bob):
    request = RequestFactory().get("/")
    request.user = alice
    request.session = {}  # type: ignore[assignment]
    sudo.sudo_grant(request)
    request.user = bob
    assert not sudo.sudo_is_active(request)


def test_htmx_requests_are_redirected_as_a_whole_page(alice_client, alices_key):
    expire_sudo(alice_client)
    response = alice_client.post(
        reverse("keys:delete", args=[alices_key.pk]), headers={"HX-Request": "true"}
    )
    assert response.status_code == 204
    assert response["HX-Redirect"].startswith(SUDO)


def test_the_next_parameter_cannot_leave_the_site(alice_client):
    expire_sudo(alice_client)
    response = alice_client.post(f"{SUDO}?next=https://evil.example/", {"password": PASSWORD})
    assert response["Location"] == reverse("accounts:settings")


def test_changing_the_email_needs_sudo_a_confirmation_link_and_is_logged(
    alice_client, alice, mailoutbox
):
    url = reverse("accounts:email_change")
    sent = alice_client.post(url, {"email": "alice.new@example.com"})
    assert sent.status_code == 302
    alice.refresh_from_db()
    assert alice.email == "alice@example.com"  # not until the link is opened
    (letter,) = mailoutbox
    assert letter.to == ["alice.new@example.com"]
    link = re.search(r"http://testserver(/accounts/email/confirm/\S+/)", letter.body)
    assert link
    page = alice_client.get(link.group(1))
    assert page.status_code == 200 and "alice.new@example.com" in page.content.decode()
    assert alice_client.post(link.group(1)).status_code == 302
    alice.refresh_from_db()
    assert alice.email == "alice.new@example.com"
    assert AuditEvent.objects.filter(owner=alice, action="account.email_changed").exists()
    # The link is spent: the account's address is no longer the one it was made for.
    assert alice_client.post(link.group(1)).status_code == 400
