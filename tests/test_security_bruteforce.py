"""Brute force: lock-out per account and per address, proxies, the 2FA step, resets."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse

from accounts.models import AuditEvent
from accounts.security import client_ip
from tests.conftest import PASSWORD
from tests.security_helpers import enrol

pytestmark = pytest.mark.django_db

LOGIN = reverse("accounts:login")


def fail(client: Client, email: str, **extra: Any) -> Any:
    return client.post(LOGIN, {"username": email, "password": "wrong password!"}, **extra)


def test_five_failures_lock_the_account_with_a_clear_wait(client, alice):
    for _ in range(4):
        assert fail(client, alice.email).status_code == 200
    locked = fail(client, alice.email)
    assert locked.status_code == 429
    assert "try again in 15 minutes" in locked.content.decode()
    assert int(locked["Retry-After"]) > 800
    # Even the right password is refused during the cool-off.
    right = client.post(LOGIN, {"username": alice.email, "password": PASSWORD})
    assert right.status_code == 429
    assert not client.get(reverse("home")).context["user"].is_authenticated
    assert AuditEvent.objects.filter(owner=alice, action="login.locked_out").exists()
    assert AuditEvent.objects.filter(owner=alice, action="login.failed").count() >= 5


def test_the_account_stays_locked_from_another_address(alice):
    for n in range(5):
        fail(Client(REMOTE_ADDR=f"10.0.0.{n + 1}"), alice.email)
    other = Client(REMOTE_ADDR="10.9.9.9")
    assert other.post(LOGIN, {"username": alice.email, "password": PASSWORD}).status_code == 429


def test_letter_case_does_not_dodge_the_account_lock(client, alice):
    for variant in ("ALICE@example.com", "Alice@Example.com", "alice@EXAMPLE.com", "aLice@x.io"):
        fail(Client(REMOTE_ADDR="10.1.1.1"), variant)
    fail(Client(REMOTE_ADDR="10.1.1.2"), "alice@example.COM")
    fresh = Client(REMOTE_ADDR="10.1.1.3")
    response = fresh.post(LOGIN, {"username": alice.email, "password": PASSWORD})
    # four variants of alice's address plus one: locked (aLice@x.io is someone else).
    assert response.status_code in (302, 429)
    assert fail(Client(REMOTE_ADDR="10.1.1.4"), "ALICE@EXAMPLE.COM").status_code == 429


def test_an_address_guessing_many_accounts_is_locked(alice):
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    for n in range(5):
        fail(attacker, f"nobody{n}@example.com")
    locked = attacker.post(LOGIN, {"username": alice.email, "password": PASSWORD})
    assert locked.status_code == 429
    # Alice herself, elsewhere, is not locked out by it.
    assert (
        Client(REMOTE_ADDR="198.51.100.1")
        .post(LOGIN, {"username": alice.email, "password": PASSWORD})
        .status_code
        == 302
    )


def test_a_forged_forwarded_for_is_ignored_without_trusted_proxies(alice):
    attacker = Client(REMOTE_ADDR="203.0.113.7")
    for n in range(5):
        fail(attacker, f"nobody{n}@example.com", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    response = attacker.post(
        LOGIN,
        {"username": "someone@example.com", "password": "x"},
        HTTP_X_FORWARDED_FOR="192.0.2.200",
    )
    assert response.status_code == 429


@override_settings(BYOK_TRUSTED_PROXY_COUNT=1)
def test_behind_one_proxy_a_forged_prefix_neither_bypasses_nor_resets(alice):
    proxy = Client(REMOTE_ADDR="10.0.0.2")  # every request arrives from the proxy
    for n in range(5):
        fail(proxy, f"nobody{n}@example.com", HTTP_X_FORWARDED_FOR=f"1.2.3.{n}, 203.0.113.7")
    locked = proxy.post(
        LOGIN,
        {"username": alice.email, "password": PASSWORD},
        HTTP_X_FORWARDED_FOR="9.9.9.9, 203.0.113.7",
    )
    assert locked.status_code == 429
    # Another client behind the same proxy is not affected.
    other = proxy.post(
        LOGIN,
        {"username": alice.email, "password": PASSWORD},
        HTTP_X_FORWARDED_FOR="198.51.100.20",
    )
    assert other.status_code == 302


@pytest.mark.parametrize(
    ("proxies", "remote", "forwarded", "expected"),
    [
        (0, "203.0.113.7", "1.1.1.1", "203.0.113.7"),
        (1, "10.0.0.2", "1.1.1.1, 203.0.113.7", "203.0.113.7"),
        (2, "10.0.0.2", "1.1.1.1, 203.0.113.7, 10.0.0.3", "203.0.113.7"),
        (2, "10.0.0.2", "203.0.113.7", "10.0.0.2"),  # fewer hops than proxies
        (1, "10.0.0.2", "not-an-ip", "10.0.0.2"),
        (1, "10.0.0.2", "", "10.0.0.2"),
    ],
)
def test_the_client_address_is_read_from_the_right(proxies, remote, forwarded, expected):
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    with override_settings(BYOK_TRUSTED_PROXY_COUNT=proxies):
        assert client_ip(request) == expected


def test_wrong_second_factor_codes_lock_out_too(client, alice):
    enrol(alice)
    client.post(LOGIN, {"username": alice.email, "password": PASSWORD})
    verify = reverse("accounts:login_verify")
    statuses = [client.post(verify, {"token": "000000"}).status_code for _ in range(6)]
    assert statuses[:4] == [400] * 4
    assert statuses[-1] == 429
    assert "try again in" in client.get(verify).content.decode()


@override_settings(BYOK_PASSWORD_RESET_LIMIT=3)
def test_password_reset_requests_are_limited_with_the_wait(client, alice):
    url = reverse("accounts:password_reset")
    for _ in range(3):
        assert client.post(url, {"email": alice.email}).status_code == 302
    limited = client.post(url, {"email": alice.email})
    assert limited.status_code == 429
    assert "Try again in 60 minutes" in limited.content.decode()
    # Per e-mail address as well: another address cannot be used to flood alice.
    other = Client(REMOTE_ADDR="198.51.100.9")
    assert other.post(url, {"email": alice.email}).status_code == 429
