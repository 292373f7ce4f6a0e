"""Error reports (the 500 e-mail, the debug page) never show key material."""

from __future__ import annotations

import sys

import pytest
from django.test import RequestFactory
from django.views.debug import ExceptionReporter

from vault import crypto as vault
from vault.models import DataKey

pytestmark = pytest.mark.django_db

CANARY = "sk-report-canary-0123456789abcdef"


def _report(settings, debug: bool) -> str:
    settings.DEBUG = debug
    secret = CANARY  # noqa: F841 - the locals are what the report shows
    kek = ("kek-bytes-" + "hidden").encode()  # noqa: F841
    api_key = CANARY  # noqa: F841
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        request = RequestFactory().get("/keys/add/")
        reporter = ExceptionReporter(request, *sys.exc_info())
        return reporter.get_traceback_html() + reporter.get_traceback_text()


@pytest.mark.parametrize("debug", [False, True])
def test_secret_locals_are_blanked_with_or_without_debug(settings, debug):
    report = _report(settings, debug)
    assert "boom" in report
    assert CANARY not in report
    assert "kek-bytes-hidden" not in report


def test_redis_and_broker_urls_are_hidden(settings):
    settings.DEBUG = False
    settings.REDIS_URL = "redis://:hunter2pw@redis:6379/0"
    settings.CELERY_BROKER_URL = "redis://:hunter2pw@redis:6379/0"
    assert "hunter2pw" not in _report(settings, debug=False)


def test_a_broken_data_key_is_a_form_error_not_a_500(alice_client, alice):
    from tests.keys_helpers import GOOD_SECRET
    from vault.services import data_key_get_or_create

    data_key_get_or_create(owner=alice)
    row = DataKey.objects.get(owner=alice)
    wrapped = bytearray(bytes(row.wrapped))
    wrapped[-1] ^= 1
    DataKey.objects.filter(pk=row.pk).update(wrapped=bytes(wrapped))
    response = alice_client.post(
        "/keys/add/", {"preset": "openai", "label": "x", "secret": GOOD_SECRET}
    )
    assert response.status_code == 200
    assert "could not be opened" in response.content.decode()
    with pytest.raises(vault.VaultError):
        vault.unwrap_dek(
            vault.parse_keyring(settings_keys()), bytes(wrapped), user_id=str(alice.pk)
        )


def settings_keys() -> str:
    from django.conf import settings

    return settings.BYOK_MASTER_KEYS


def test_operators_cannot_delete_data_keys_or_provider_keys_in_the_admin(rf, alice):
    from django.contrib import admin

    from accounts.models import User
    from keys.models import ProviderKey

    operator = User.objects.create_superuser(email="op@example.com", password="x-very-long-pw-1")
    request = rf.get("/admin/")
    request.user = operator
    for model in (DataKey, ProviderKey):
        model_admin = admin.site._registry[model]
        assert not model_admin.has_delete_permission(request)
        assert not model_admin.has_add_permission(request)
