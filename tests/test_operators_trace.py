"""Operators leave a trace and cannot become a user.

No password is set or seen in the admin (superusers included), a reset link goes to the
user's mailbox only, and every operator action on an account is in the user's security log
as "by an operator", without saying who.
"""

from __future__ import annotations

import re

import pytest
from django.apps import apps
from django.contrib.admin import helpers
from django.contrib.auth.models import Group
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts.models import AuditEvent, User, UserSession
from accounts.twofactor import has_two_factor
from ops.roles import OPERATORS
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key
from tests.operators_helpers import (
    fresh_cache,  # noqa: F401 (a fixture)
    make_staff,
    operator_client,
    verified_client,
)
from tests.security_helpers import allow_code_reuse, code_for, enrol

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_cache")]

USERS = "/admin/accounts/user/"
LOG = reverse("accounts:security_log")
OPERATOR_IP = "192.0.2.77"
Action = AuditEvent.Action


def _operator(kind: str) -> tuple[User, Client]:
    """A verified operator session, from an address of its own: the Operators role or root."""
    if kind == "superuser":
        user = make_staff("root@example.com", superuser=True)
    else:
        user = make_staff("op@example.com", role=OPERATORS)
    return user, verified_client(user, Client(REMOTE_ADDR=OPERATOR_IP))


def _act(client: Client, action: str, *users: User):
    return client.post(
        USERS,
        {"action": action, helpers.ACTION_CHECKBOX_NAME: [str(user.pk) for user in users]},
        follow=True,
    )


def _log_of(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.get(LOG).content.decode()


def _change_form(user: User, **fields: object) -> dict[str, object]:
    data: dict[str, object] = {
        "display_name": user.display_name,
        "is_active": "on" if user.is_active else "",
        "rate_limit_override-TOTAL_FORMS": "0",
        "rate_limit_override-INITIAL_FORMS": "0",
    }
    data.update(fields)
    return {name: value for name, value in data.items() if value != ""}


def _add_form(**fields: object) -> dict[str, object]:
    return {
        "rate_limit_override-TOTAL_FORMS": "0",
        "rate_limit_override-INITIAL_FORMS": "0",
        **fields,
    }


def _reset_link(message: mail.EmailMessage) -> str:
    match = re.search(r"https?://[^/\s]+(/accounts/password/reset/\S+/\S+/)", str(message.body))
    assert match, message.body
    return match.group(1)


# --- no password in the admin ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["superuser", "operators"])
def test_it_refuses_the_password_page_to_every_operator(alice, kind):
    _op, client = _operator(kind)
    assert client.get(f"{USERS}{alice.pk}/password/").status_code == 404
    response = client.post(
        f"{USERS}{alice.pk}/password/", {"password1": "x-new-pass-42", "password2": "x-new-pass-42"}
    )
    assert response.status_code == 404
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)
    page = client.get(f"{USERS}{alice.pk}/change/").content.decode()
    assert 'name="password' not in page
    assert f"/{alice.pk}/password/" not in page and "../password/" not in page
    assert 'name="email"' not in page  # the reset link's address is the owner's to change


def test_it_keeps_the_address_out_of_an_operators_reach(alice):
    _op, client = _operator("superuser")
    response = client.post(
        f"{USERS}{alice.pk}/change/", _change_form(alice, email="mine@evil.example")
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.email == "alice@example.com"


def test_it_creates_accounts_with_no_password_field_and_no_usable_password():
    _op, client = _operator("superuser")
    page = client.get(f"{USERS}add/").content.decode()
    assert 'name="email"' in page and 'name="password' not in page
    response = client.post(
        f"{USERS}add/",
        _add_form(email="New@Example.com", password1="x", password2="x"),
    )
    assert response.status_code == 302, response.content[:2000]
    user = User.objects.get(email="new@example.com")
    assert not user.has_usable_password() and not user.check_password("x")
    assert (
        Client()
        .post(reverse("accounts:login"), {"username": user.email, "password": "x"})
        .status_code
        == 200
    )  # refused: the form again
    assert "Account created by an operator" in _log_of(user)


# --- the reset link ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["superuser", "operators"])
def test_it_emails_the_user_a_working_reset_link_the_operator_never_sees(client, alice, kind):
    _op, op_client = _operator(kind)
    response = _act(op_client, "send_password_reset", alice)
    assert response.status_code == 200
    assert "Password reset link e-mailed to 1 account(s)" in response.content.decode()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["alice@example.com"]
    assert "A BYOK operator sent you this link" in str(message.body)
    link = _reset_link(message)
    token = link.rstrip("/").rsplit("/", 1)[-1]
    assert token.encode() not in response.content
    # The link works for the user: a new password, and the old one is gone.
    form_page = client.get(link, follow=True)
    new = "a brand new password 77"
    done = client.post(
        form_page.redirect_chain[-1][0], {"new_password1": new, "new_password2": new}
    )
    assert done.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password(new) and not alice.check_password(PASSWORD)
    log = _log_of(alice)
    assert "Password reset link sent to you by an operator" in log
    assert "Password reset by email" in log


def test_it_sends_no_link_to_a_disabled_account(alice):
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    _op, client = _operator("operators")
    response = _act(client, "send_password_reset", alice)
    assert "e-mailed to 0 account(s)" in response.content.decode()
    assert mail.outbox == []
    assert not AuditEvent.objects.filter(owner=alice, action__startswith="operator.").exists()


def test_it_lets_an_account_an_operator_created_set_its_password_itself(client):
    _op, op_client = _operator("superuser")
    op_client.post(f"{USERS}add/", _add_form(email="invited@example.com"))
    client.post(reverse("accounts:password_reset"), {"email": "invited@example.com"})
    assert len(mail.outbox) == 1 and "Someone asked" in str(mail.outbox[0].body)
    assert "/accounts/password/reset/" in _reset_link(mail.outbox[0])


# --- the trace in the user's security log ------------------------------------------------------


def _disable(client: Client, user: User) -> None:
    _act(client, "disable_accounts", user)


def _enable(client: Client, user: User) -> None:
    _disable(client, user)
    _act(client, "enable_accounts", user)


def _end_sessions(client: Client, user: User) -> None:
    Client().post(reverse("accounts:login"), {"username": user.email, "password": PASSWORD})
    _act(client, "end_all_sessions", user)
    assert not UserSession.objects.filter(owner=user).exists()


def _reset_2fa(client: Client, user: User) -> None:
    enrol(user)
    _act(client, "reset_two_factor", user)
    assert not has_two_factor(user)


def _send_link(client: Client, user: User) -> None:
    _act(client, "send_password_reset", user)


def _rename(client: Client, user: User) -> None:
    client.post(f"{USERS}{user.pk}/change/", _change_form(user, display_name="Renamed"))


def _disable_in_form(client: Client, user: User) -> None:
    Client().post(reverse("accounts:login"), {"username": user.email, "password": PASSWORD})
    client.post(f"{USERS}{user.pk}/change/", _change_form(user, is_active=""))
    user.refresh_from_db()
    assert not user.is_active and not UserSession.objects.filter(owner=user).exists()


def _make_support(client: Client, user: User) -> None:
    support = Group.objects.get(name="Support")
    client.post(
        f"{USERS}{user.pk}/change/",
        _change_form(user, is_staff="on", groups=[str(support.pk)]),
    )
    assert user.groups.filter(pk=support.pk).exists()


def _rate_limits(client: Client, user: User) -> None:
    client.post(
        "/admin/usage/ratelimitoverride/add/",
        {"user": user.pk, "turns_per_minute": 5, "concurrent_turns": "", "note": ""},
    )


def _revoke_key(client: Client, user: User) -> None:
    key = add_key(user, None, preset="openai", label="Work key")
    client.post(
        "/admin/keys/providerkey/",
        {"action": "revoke_keys", helpers.ACTION_CHECKBOX_NAME: [str(key.pk)]},
    )


OPERATOR_ACTIONS = [
    (_disable, Action.OPERATOR_DISABLED, "Account disabled by an operator"),
    (_enable, Action.OPERATOR_ENABLED, "Account enabled by an operator"),
    (_end_sessions, Action.OPERATOR_SESSIONS_ENDED, "All sessions ended by an operator"),
    (
        _reset_2fa,
        Action.OPERATOR_TWO_FACTOR_RESET,
        "Two-factor authentication was reset by an operator",
    ),
    (_send_link, Action.OPERATOR_PASSWORD_RESET_SENT, "Password reset link sent to you by an"),
    (_rename, Action.OPERATOR_CHANGED, "Account changed by an operator"),
    (_disable_in_form, Action.OPERATOR_DISABLED, "Account disabled by an operator"),
    (_make_support, Action.OPERATOR_ROLE_CHANGED, "Operator role changed by an operator"),
    (_rate_limits, Action.OPERATOR_RATE_LIMITS, "Rate limits changed by an operator"),
    (_revoke_key, Action.KEY_REVOKED, "Key revoked by an operator · Work key"),
]


@pytest.mark.parametrize(
    ("do", "action", "text"), OPERATOR_ACTIONS, ids=[row[0].__name__ for row in OPERATOR_ACTIONS]
)
def test_it_shows_each_operator_action_in_the_users_log_as_an_operators(alice, do, action, text):
    operator, client = _operator("superuser")
    do(client, alice)
    event = AuditEvent.objects.filter(owner=alice, action=action).first()
    assert event is not None, action
    # The operators' audit keeps who it was, and from where.
    assert event.by_operator and event.actor == operator and event.ip_address == OPERATOR_IP
    alice.refresh_from_db()
    if not alice.is_active:
        User.objects.filter(pk=alice.pk).update(is_active=True)
    log = _log_of(alice)
    assert text in log
    assert event.created_at.strftime("%H:%M") in log
    # The user's page does not say who: no address, e-mail or browser of the operator.
    assert operator.email not in log and OPERATOR_IP not in log
    only_operators = Client()
    only_operators.force_login(alice)
    filtered = only_operators.get(LOG, {"category": "operator"}).content.decode()
    assert text in filtered and "Logged in" not in filtered


def test_the_users_own_2fa_off_stays_theirs_and_an_operators_reset_reads_as_one(alice):
    device, _codes = enrol(alice)
    allow_code_reuse(device)
    me = Client(REMOTE_ADDR="198.51.100.9")
    me.force_login(alice)
    me.post(reverse("accounts:sudo"), {"password": PASSWORD, "token": code_for(device)})
    me.post(reverse("accounts:two_factor_disable"))
    assert not has_two_factor(alice)
    own = AuditEvent.objects.get(owner=alice, action=Action.TWO_FACTOR_DISABLED)
    assert own.actor == alice and not own.by_operator and own.category == "2fa"
    _operator_user, client = operator_client()
    _reset_2fa(client, alice)
    log = _log_of(alice)
    assert log.count("Two-factor authentication turned off") == 1
    assert "Two-factor authentication was reset by an operator" in log
    assert "198.51.100.9" in log  # the user's own address is still shown


def test_an_operator_event_stays_an_operators_after_the_operator_is_deleted(alice):
    operator, client = _operator("operators")
    _act(client, "end_all_sessions", alice)
    operator.delete()
    event = AuditEvent.objects.get(owner=alice, action=Action.OPERATOR_SESSIONS_ENDED)
    assert event.actor is None and event.by_operator and event.category == "operator"


def test_the_migration_attributes_earlier_operator_events(alice):
    from importlib import import_module

    operator = make_staff("op@example.com", role=OPERATORS)
    reset = AuditEvent.objects.create(owner=alice, actor=operator, action="2fa.disabled")
    own = AuditEvent.objects.create(owner=alice, actor=alice, action="2fa.disabled")
    revoked = AuditEvent.objects.create(owner=alice, actor=operator, action="key.revoked")
    system = AuditEvent.objects.create(owner=alice, action="operator.disabled")
    migration = import_module("accounts.migrations.0006_operator_attribution")
    migration.attribute_operator_events(apps, None)
    for event in (reset, own, revoked, system):
        event.refresh_from_db()
    assert (reset.action, reset.by_operator) == ("operator.2fa_reset", True)
    assert (own.action, own.by_operator) == ("2fa.disabled", False)
    assert revoked.by_operator and system.by_operator
