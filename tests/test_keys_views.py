from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import AuditEvent
from keys.models import ProviderKey
from tests.keys_helpers import GOOD_SECRET, add_key

pytestmark = pytest.mark.django_db

# (url name, methods that are allowed, whether a GET renders a page)
KEY_VIEWS = [
    ("keys:detail", {"GET"}),
    ("keys:status", {"GET"}),
    ("keys:verify", {"POST"}),
    ("keys:rename", {"POST"}),
    ("keys:expiry", {"POST"}),
    ("keys:replace", {"GET", "POST"}),
    ("keys:revoke", {"GET", "POST"}),
    ("keys:delete", {"GET", "POST"}),
]


def url_for(name, key):
    if name == "keys:move":
        return reverse(name, args=[key.pk, "up"])
    return reverse(name, args=[key.pk])


@pytest.fixture
def alices_key(alice, fake_provider):
    return add_key(alice, fake_provider)


@pytest.mark.parametrize(("name", "methods"), [*KEY_VIEWS, ("keys:move", {"POST"})])
def test_another_users_key_is_a_404_everywhere(client, bob, alices_key, name, methods):
    client.force_login(bob)
    for method in methods:
        response = getattr(client, method.lower())(
            url_for(name, alices_key), {"label": "x", "secret": "sk-stolen-0000000000"}
        )
        assert response.status_code == 404, (name, method)
    alices_key.refresh_from_db()
    assert alices_key.label == "Fake"
    assert alices_key.status != ProviderKey.Status.REVOKED
    assert (
        not AuditEvent.objects.filter(action__startswith="key.")
        .exclude(action="key.created")
        .exists()
    )


def test_a_missing_key_is_the_same_404(alice_client):
    missing = reverse("keys:detail", args=["00000000-0000-0000-0000-000000000000"])
    assert alice_client.get(missing).status_code == 404


@pytest.mark.parametrize(("name", "methods"), [*KEY_VIEWS, ("keys:move", {"POST"})])
def test_anonymous_visitors_are_sent_to_log_in(client, alices_key, name, methods):
    for method in methods:
        response = getattr(client, method.lower())(url_for(name, alices_key))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("accounts:login"))


@pytest.mark.parametrize(("name", "methods"), [*KEY_VIEWS, ("keys:move", {"POST"})])
def test_wrong_methods_are_405(alice_client, alices_key, name, methods):
    for method in {"GET", "POST", "PUT", "DELETE"} - methods:
        response = getattr(alice_client, method.lower())(url_for(name, alices_key))
        assert response.status_code == 405, (name, method)


def test_the_list_shows_only_the_owners_keys_and_never_a_secret(
    alice_client, bob, alices_key, fake_provider
):
    add_key(bob, fake_provider, label="Bobs key", secret="sk-bob-only-000000000000")
    html = alice_client.get(reverse("keys:list")).content.decode()
    assert "Fake" in html
    assert "sk-…WXYZ" in html
    assert "Bobs key" not in html
    assert GOOD_SECRET not in html


def test_an_empty_list_invites_to_add_a_key(alice_client):
    html = alice_client.get(reverse("keys:list")).content.decode()
    assert "No keys yet" in html
    assert reverse("keys:add") in html


def test_adding_a_key_redirects_to_it_and_shows_checking(alice_client, alice, fake_provider):
    response = alice_client.post(
        reverse("keys:add"),
        {
            "preset": "custom",
            "label": "Mine",
            "secret": GOOD_SECRET,
            "base_url": fake_provider.base_url("openai"),
        },
    )
    key = ProviderKey.objects.get(owner=alice)
    assert response.status_code == 302
    assert response["Location"] == reverse("keys:detail", args=[key.pk])
    page = alice_client.get(response["Location"]).content.decode()
    assert "Checking…" in page
    assert 'hx-trigger="every 2s"' in page
    assert GOOD_SECRET not in page


def test_a_form_with_errors_never_renders_the_secret_back(alice_client, alice):
    response = alice_client.post(
        reverse("keys:add"),
        {"preset": "custom", "label": "", "secret": GOOD_SECRET, "base_url": "api.example.com/v1"},
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "Start the URL with https://" in html
    assert GOOD_SECRET not in html
    assert not ProviderKey.objects.exists()


def test_the_add_form_needs_a_provider(alice_client):
    response = alice_client.post(reverse("keys:add"), {"preset": "", "secret": GOOD_SECRET})
    assert "preset" in response.context["form"].errors
    assert GOOD_SECRET not in response.content.decode()


def test_the_endpoint_field_follows_the_preset(alice_client):
    fixed = alice_client.get(reverse("keys:add_endpoint"), {"preset": "anthropic"}).content.decode()
    assert "https://api.anthropic.com" in fixed
    assert 'name="base_url"' not in fixed
    custom = alice_client.get(reverse("keys:add_endpoint"), {"preset": "custom"}).content.decode()
    assert 'name="base_url"' in custom


def test_the_status_fragment_stops_polling_once_checked(alice_client, alices_key):
    ProviderKey.objects.filter(pk=alices_key.pk).update(status="valid")
    html = alice_client.get(reverse("keys:status", args=[alices_key.pk])).content.decode()
    assert "Valid" in html
    assert "hx-trigger" not in html


def test_the_key_page_s_last_checked_time_follows_the_badge(alice_client, alices_key):
    from django.utils import timezone

    ProviderKey.objects.filter(pk=alices_key.pk).update(status="checking", last_verified_at=None)
    page = alice_client.get(reverse("keys:detail", args=[alices_key.pk])).content.decode()
    assert "?details=1" in page and "hx-swap-oob" not in page
    ProviderKey.objects.filter(pk=alices_key.pk).update(
        status="valid", last_verified_at=timezone.now()
    )
    url = reverse("keys:status", args=[alices_key.pk])
    fragment = alice_client.get(url, {"details": "1"}).content.decode()
    assert f'id="last-checked-{alices_key.pk}" hx-swap-oob="true">0' in fragment  # "0 minutes ago"
    assert "hx-swap-oob" not in alice_client.get(url).content.decode()  # the keys list's poll


def test_a_check_that_takes_too_long_offers_a_retry(alice_client, alices_key):
    from datetime import timedelta

    from django.utils import timezone

    ProviderKey.objects.filter(pk=alices_key.pk).update(
        check_requested_at=timezone.now() - timedelta(minutes=5)
    )
    html = alice_client.get(reverse("keys:status", args=[alices_key.pk])).content.decode()
    assert "Check again" in html
    assert "hx-trigger" not in html


def test_rename_shows_a_clash_next_to_the_field(alice_client, alice, fake_provider, alices_key):
    add_key(alice, fake_provider, label="Other")
    response = alice_client.post(reverse("keys:rename", args=[alices_key.pk]), {"label": "other"})
    assert response.status_code == 400
    assert "already have a key with this label" in response.content.decode()
    alices_key.refresh_from_db()
    assert alices_key.label == "Fake"


def test_replace_revoke_and_delete_work_for_the_owner(alice_client, alices_key):
    response = alice_client.post(
        reverse("keys:replace", args=[alices_key.pk]), {"secret": "sk-brand-new-0000001111"}
    )
    assert response.status_code == 302
    alices_key.refresh_from_db()
    assert alices_key.fingerprint == "sk-…1111"
    assert alice_client.post(reverse("keys:revoke", args=[alices_key.pk])).status_code == 302
    alices_key.refresh_from_db()
    assert alices_key.status == "revoked"
    assert alice_client.get(reverse("keys:replace", args=[alices_key.pk])).status_code == 404
    assert alice_client.post(reverse("keys:delete", args=[alices_key.pk])).status_code == 302
    assert not ProviderKey.objects.exists()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"key.created", "key.replaced", "key.revoked", "key.deleted"} <= actions


def test_the_confirmation_pages_explain_what_happens(alice_client, alices_key):
    revoke = alice_client.get(reverse("keys:revoke", args=[alices_key.pk])).content.decode()
    assert "cannot be undone" in revoke
    delete = alice_client.get(reverse("keys:delete", args=[alices_key.pk])).content.decode()
    assert "Delete the key" in delete


def test_a_bad_replacement_secret_is_a_field_error(alice_client, alices_key):
    response = alice_client.post(
        reverse("keys:replace", args=[alices_key.pk]), {"secret": "sk bad\nkey"}
    )
    assert response.status_code == 200
    assert "spaces or line breaks" in response.content.decode()
    assert "sk bad" not in response.content.decode()
