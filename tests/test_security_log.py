"""The security log: logins, 2FA, key events and use, operator actions; own rows only."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import AuditEvent, User
from accounts.services import audit_count_use, audit_record
from tests.conftest import PASSWORD
from tests.security_helpers import enrol

pytestmark = pytest.mark.django_db

LOG = reverse("accounts:security_log")


def test_it_shows_logins_with_address_and_browser(alice):
    stranger = Client(REMOTE_ADDR="203.0.113.66", HTTP_USER_AGENT="EvilBot/1.0")
    stranger.post(reverse("accounts:login"), {"username": alice.email, "password": "nope nope"})
    me = Client(REMOTE_ADDR="198.51.100.5", HTTP_USER_AGENT="Mozilla/5.0 Firefox/128.0")
    me.post(reverse("accounts:login"), {"username": alice.email, "password": PASSWORD})
    html = me.get(LOG).content.decode()
    assert "Failed login" in html and "203.0.113.66" in html and "EvilBot/1.0" in html
    assert "Logged in" in html and "198.51.100.5" in html
    assert "nope nope" not in html


def test_it_shows_2fa_key_and_daily_use_events(alice_client, alice):
    enrol(alice)
    audit_record(owner=alice, action="key.created", target_label="Work key")
    for _ in range(3):
        audit_count_use(owner=alice, action="key.used", target_id="k1", target_label="Work key")
    html = alice_client.get(LOG).content.decode()
    assert "Two-factor authentication turned on" in html
    assert "Key added" in html
    assert "3\u00d7" in html  # the daily count


def test_operator_changes_in_the_admin_show_up_as_operator_actions(alice):
    from types import SimpleNamespace

    from django.contrib import admin
    from django.test import RequestFactory

    operator = User.objects.create_superuser(email="op@example.com", password=PASSWORD)
    request = RequestFactory().post("/admin/", REMOTE_ADDR="192.0.2.10")
    request.user = operator
    alice.display_name = "Renamed by op"
    model_admin = admin.site._registry[User]
    model_admin.save_model(
        request, alice, SimpleNamespace(changed_data=["display_name"]), change=True
    )
    event = AuditEvent.objects.get(owner=alice, action="operator.changed")
    assert event.actor == operator and "display_name" in event.details["fields"]

    alices = Client()
    alices.force_login(alice)
    page = alices.get(LOG, {"category": "operator"}).content.decode()
    assert "Account changed by an operator" in page and "by an operator" in page
    assert "Logged in" not in page


def test_filters_narrow_the_list(alice_client, alice):
    audit_record(owner=alice, action="key.created", target_label="Work key")
    audit_record(owner=alice, action="2fa.enabled")
    keys_only = alice_client.get(LOG, {"category": "keys"}).content.decode()
    assert "Key added" in keys_only and "Two-factor authentication turned on" not in keys_only
    login_only = alice_client.get(LOG, {"category": "login"}).content.decode()
    assert "Key added" not in login_only
    future = alice_client.get(LOG, {"since": "2999-01-01"}).content.decode()
    assert "Nothing here yet" in future
    junk = alice_client.get(LOG, {"category": "nope", "since": "yesterday"})
    assert junk.status_code == 200


def test_it_lists_only_the_users_own_rows(alice_client, alice, bob):
    audit_record(owner=bob, action="key.created", target_label="Bobs secret project")
    html = alice_client.get(LOG).content.decode()
    assert "Bobs secret project" not in html


def test_anonymous_visitors_are_sent_to_log_in(client):
    response = client.get(LOG)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
