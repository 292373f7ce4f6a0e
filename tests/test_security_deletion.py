"""Account deletion: sudo + typed confirmation; the data key goes first (crypto-shredding)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import AuditEvent, TOTPDevice, User
from chat.models import Conversation, Message
from keys.models import ProviderKey
from keys.services import KEY_PURPOSE, provider_key_open
from privacy.services import account_delete
from tests.keys_helpers import GOOD_SECRET, add_key
from tests.security_helpers import enrol, expire_sudo, make_conversation
from vault import crypto as vault
from vault.models import DataKey
from vault.services import OwnerCipher

pytestmark = pytest.mark.django_db

DELETE = reverse("privacy:delete")


@pytest.fixture
def alices_data(alice):
    key = add_key(alice, None, preset="openai")
    conversation = make_conversation(alice, key, "my secret plans for tuesday")
    enrol(alice)
    return key, conversation


def test_it_needs_sudo_and_the_typed_email(alice_client, alice, alices_data):
    expire_sudo(alice_client)
    assert alice_client.post(DELETE, {"confirmation": alice.email})["Location"].startswith(
        reverse("accounts:sudo")
    )
    from tests.conftest import PASSWORD
    from tests.security_helpers import allow_code_reuse, code_for

    device = TOTPDevice.objects.get(user=alice)
    allow_code_reuse(device)
    alice_client.post(reverse("accounts:sudo"), {"password": PASSWORD, "token": code_for(device)})
    wrong = alice_client.post(DELETE, {"confirmation": "bob@example.com"})
    assert wrong.status_code == 200
    assert "not your email" in wrong.content.decode()
    assert User.objects.filter(pk=alice.pk).exists()

    done = alice_client.post(DELETE, {"confirmation": " ALICE@example.com "})
    assert done.status_code == 302
    assert not User.objects.filter(pk=alice.pk).exists()
    assert not alice_client.get(reverse("home")).context["user"].is_authenticated


def test_it_removes_every_row_of_the_user_and_nobody_elses(alice, bob, alices_data):
    bobs_key = add_key(bob, None, preset="openai", label="Bob's")
    account_delete(user=alice)
    for model in (DataKey, ProviderKey, Conversation, Message, AuditEvent, TOTPDevice):
        rows = model.objects.filter(**{model_owner(model): alice.pk})  # type: ignore[misc]
        assert not rows.exists(), model
    assert ProviderKey.objects.filter(pk=bobs_key.pk).exists()
    assert DataKey.objects.filter(owner=bob).exists()


def model_owner(model) -> str:
    return "user_id" if model is TOTPDevice else "owner_id"


def test_the_data_key_is_deleted_before_any_other_row(alice, alices_data):
    with CaptureQueriesContext(connection) as queries:
        account_delete(user=alice)
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    first_real = next(sql for sql in deletes if "django_session" not in sql)
    assert "vault_datakey" in first_real


def test_sealed_values_copied_out_before_cannot_be_opened_after(alice, alices_data):
    key, conversation = alices_data
    message = Message.objects.filter(conversation=conversation, role="user").get()
    stolen_message = bytes(message.sealed_content)
    stolen_key = bytes(key.sealed_secret)
    binding = {"provider": key.preset, "base_url": key.base_url}
    assert OwnerCipher(alice).open("message", message.pk, stolen_message)  # opens before
    assert provider_key_open(key) == GOOD_SECRET
    alice_id, message_id = alice.pk, message.pk

    account_delete(user=alice)

    # Someone who recreates a user with the same id only gets a brand-new data key.
    imposter = User.objects.create_user(email="alice@example.com", password="x" * 12)
    User.objects.filter(pk=imposter.pk).update(id=alice_id)
    imposter = User.objects.get(pk=alice_id)
    with pytest.raises(vault.VaultError):
        OwnerCipher(imposter).open("message", message_id, stolen_message)
    with pytest.raises(vault.VaultError):
        OwnerCipher(imposter).open(KEY_PURPOSE, key.pk, stolen_key, extra=binding)


def test_a_backup_copy_of_the_data_key_dies_with_the_retired_master_key(alice, alices_data):
    """README: rotate the master key, then retire the old one; old backups stop opening."""
    old_ring = vault.parse_keyring(
        "t2:dGVzdC1tYXN0ZXIta2V5LXR3by0wMDAwMDAwMDAwMDA=,"
        "t1:dGVzdC1tYXN0ZXIta2V5LW9uZS0wMDAwMDAwMDAwMDA="
    )
    backup_wrapped = bytes(DataKey.objects.get(owner=alice).wrapped)  # a database backup
    assert vault.unwrap_dek(old_ring, backup_wrapped, user_id=str(alice.pk))
    account_delete(user=alice)
    new_ring = vault.Keyring(keys={"t3": b"n" * 32}, active_id="t3")  # t2 and t1 retired
    with pytest.raises(vault.VaultError, match="not configured"):
        vault.unwrap_dek(new_ring, backup_wrapped, user_id=str(alice.pk))
