"""Roles and operator actions: who may see and change what, and the audit trail."""

from __future__ import annotations

import pytest
from django.contrib.admin import helpers
from django.contrib.auth.models import Group
from django.urls import reverse

from accounts.models import AuditEvent, User, UserSession
from accounts.twofactor import has_two_factor
from keys.models import ProviderKey
from ops.roles import OPERATORS, SUPPORT
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key
from tests.operators_helpers import (
    fresh_cache,  # noqa: F401 (a fixture)
    make_staff,
    operator_client,
    support_client,
    verified_client,
)
from tests.security_helpers import enrol
from usage.models import ModelPrice, RateLimitOverride

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_cache")]

USERS = "/admin/accounts/user/"
KEYS = "/admin/keys/providerkey/"


def _act(client, url, action, *pks):
    return client.post(
        url, {"action": action, helpers.ACTION_CHECKBOX_NAME: [str(pk) for pk in pks]}
    )


def _signed_in(client, user):
    client.post(reverse("accounts:login"), {"username": user.email, "password": PASSWORD})
    return client


def test_the_roles_exist_with_their_permissions():
    support = Group.objects.get(name=SUPPORT)
    operators = Group.objects.get(name=OPERATORS)
    support_codes = set(support.permissions.values_list("codename", flat=True))
    assert support_codes and all(code.startswith("view_") for code in support_codes)
    operator_codes = set(operators.permissions.values_list("codename", flat=True))
    assert {"change_user", "change_modelprice", "change_providerkey"} <= operator_codes
    assert "delete_user" not in operator_codes


def test_anonymous_visitors_get_the_login_page(client):
    response = client.get("/admin/", follow=True)
    assert response.redirect_chain[-1][0].startswith(reverse("accounts:login"))
    assert b'name="password"' in response.content


def test_signed_in_non_staff_get_the_login_page_which_refuses_them(alice_client):
    response = alice_client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert alice_client.get(response["Location"]).status_code == 403
    assert alice_client.get(reverse("admin:dashboard_health")).status_code == 302


def test_support_staff_see_every_list_but_change_nothing(alice):
    key = add_key(alice, None, preset="openai", label="Work")
    price = ModelPrice.objects.get(pk=ModelPrice.objects.values_list("pk", flat=True)[0])
    _support, client = support_client()
    for url in (
        "/admin/",
        USERS,
        KEYS,
        "/admin/chat/message/",
        "/admin/chat/conversation/",
        "/admin/usage/usageevent/",
        "/admin/usage/modelprice/",
        "/admin/accounts/auditevent/",
        f"{USERS}{alice.pk}/change/",
    ):
        assert client.get(url).status_code == 200, url
    # The change page is read-only: no save button.
    assert b'name="_save"' not in client.get(f"{USERS}{alice.pk}/change/").content
    assert client.post(f"{USERS}{alice.pk}/change/", {"email": "x@example.com"}).status_code == 403
    assert client.get(f"/admin/usage/modelprice/{price.pk}/change/").status_code == 200
    assert (
        client.post(f"/admin/usage/modelprice/{price.pk}/change/", {"input_per_mtok": 1})
    ).status_code == 403
    assert client.get("/admin/usage/modelprice/add/").status_code == 403
    assert client.get("/admin/usage/ratelimitoverride/add/").status_code == 403
    # Actions are not offered and not run.
    assert b"disable_accounts" not in client.get(USERS).content
    _act(client, USERS, "disable_accounts", alice.pk)
    _act(client, KEYS, "revoke_keys", key.pk)
    alice.refresh_from_db()
    key.refresh_from_db()
    assert alice.is_active and key.status != ProviderKey.Status.REVOKED
    assert not AuditEvent.objects.filter(action__startswith="operator.").exists()


def test_operators_cannot_grant_roles_set_passwords_or_touch_staff(alice):
    operator, client = operator_client()
    other = make_staff("other-op@example.com", role=OPERATORS)
    page = client.get(f"{USERS}{alice.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' in page.content
    assert b'name="is_superuser"' not in page.content
    client.post(
        f"{USERS}{alice.pk}/change/",
        {
            "email": alice.email,
            "display_name": "Alice",
            "is_active": "on",
            "is_staff": "on",
            "is_superuser": "on",
            "rate_limit_override-TOTAL_FORMS": "0",
            "rate_limit_override-INITIAL_FORMS": "0",
        },
    )
    alice.refresh_from_db()
    assert alice.display_name == "Alice" and not alice.is_superuser and not alice.is_staff
    assert client.get(f"{USERS}{alice.pk}/password/").status_code == 404
    assert client.get(f"{USERS}{alice.pk}/delete/").status_code == 403
    # Staff accounts, their own included, are out of an operator's reach.
    assert b'name="_save"' not in client.get(f"{USERS}{other.pk}/change/").content
    assert client.post(f"{USERS}{operator.pk}/change/", {"email": "x@x.io"}).status_code == 403
    _act(client, USERS, "disable_accounts", other.pk)
    other.refresh_from_db()
    assert other.is_active


def test_an_operator_disables_and_enables_an_account_and_the_user_is_told(client, alice):
    _signed_in(client, alice)
    assert UserSession.objects.filter(owner=alice).exists()
    operator, op_client = operator_client()
    response = _act(op_client, USERS, "disable_accounts", alice.pk)
    assert response.status_code == 302
    alice.refresh_from_db()
    assert not alice.is_active
    assert not UserSession.objects.filter(owner=alice).exists()
    assert client.get(reverse("accounts:settings")).status_code == 302  # signed out
    event = AuditEvent.objects.get(owner=alice, action=AuditEvent.Action.OPERATOR_DISABLED)
    assert event.actor == operator and event.ip_address == "127.0.0.1"
    _act(op_client, USERS, "enable_accounts", alice.pk)
    alice.refresh_from_db()
    assert alice.is_active
    _signed_in(client, alice)
    log = client.get(reverse("accounts:security_log")).content.decode()
    assert "Account disabled by an operator" in log
    assert "Account enabled by an operator" in log
    assert "by an operator" in log


def test_an_operator_ends_all_sessions_and_resets_two_factor(client, alice):
    _signed_in(client, alice)
    enrol(alice)
    _operator, op_client = operator_client()
    _act(op_client, USERS, "end_all_sessions", alice.pk)
    assert not UserSession.objects.filter(owner=alice).exists()
    assert AuditEvent.objects.filter(
        owner=alice, action=AuditEvent.Action.OPERATOR_SESSIONS_ENDED, details__sessions=1
    ).exists()
    _act(op_client, USERS, "reset_two_factor", alice.pk)
    assert not has_two_factor(alice)
    reset = AuditEvent.objects.get(owner=alice, action=AuditEvent.Action.OPERATOR_TWO_FACTOR_RESET)
    assert reset.actor is not None and reset.actor.email == "op@example.com"
    assert reset.category == "operator" and reset.by_operator
    assert not AuditEvent.objects.filter(
        owner=alice, action=AuditEvent.Action.TWO_FACTOR_DISABLED
    ).exists()


def test_an_operator_revokes_a_key_and_the_owner_sees_it(client, alice):
    key = add_key(alice, None, preset="openai", label="Work key")
    operator, op_client = operator_client()
    response = _act(op_client, KEYS, "revoke_keys", key.pk)
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.status == ProviderKey.Status.REVOKED and key.sealed_secret in (b"", memoryview(b""))
    assert "operator" in key.status_reason
    event = AuditEvent.objects.get(owner=alice, action=AuditEvent.Action.KEY_REVOKED)
    assert event.actor == operator and event.target_label == "Work key"
    client.force_login(alice)
    log = client.get(reverse("accounts:security_log") + "?category=operator").content.decode()
    assert "Key revoked by an operator · Work key" in log


def test_an_operator_overrides_a_price_and_rate_limits(alice):
    operator, client = operator_client()
    price = ModelPrice.objects.get(pk=ModelPrice.objects.values_list("pk", flat=True)[0])
    response = client.post(
        f"/admin/usage/modelprice/{price.pk}/change/",
        {
            "preset": price.preset,
            "model": price.model,
            "input_per_mtok": 123,
            "output_per_mtok": 456,
            "cache_read_per_mtok": "",
            "cache_write_per_mtok": "",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    price.refresh_from_db()
    assert (price.input_per_mtok, price.overridden) == (123, True)
    assert AuditEvent.objects.filter(
        owner=operator, actor=operator, action=AuditEvent.Action.OPERATOR_PRICE_CHANGED
    ).exists()
    response = client.post(
        "/admin/usage/ratelimitoverride/add/",
        {"user": alice.pk, "turns_per_minute": 99, "concurrent_turns": "", "note": "beta"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert RateLimitOverride.objects.get(user=alice).turns_per_minute == 99
    event = AuditEvent.objects.get(owner=alice, action=AuditEvent.Action.OPERATOR_RATE_LIMITS)
    assert event.details["turns per minute"] == 99


def test_the_user_page_shows_usage_totals_and_the_rate_limit_override(alice):
    from tests.operators_helpers import record_turn

    record_turn(alice, input_tokens=1000, output_tokens=10)
    superuser = make_staff("root@example.com", superuser=True)
    client = verified_client(superuser)
    html = client.get(f"{USERS}{alice.pk}/change/").content.decode()
    assert "1 turns (0 failed), 1000 input and 10 output tokens" in html
    assert "rate-limit override" in html.lower()
    assert User.objects.filter(pk=alice.pk).exists()
