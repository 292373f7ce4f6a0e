"""The local demo provider gives a newcomer a working chat with no key and no internet."""

from __future__ import annotations

import pytest
from django.urls import reverse

from byok_site.demo_provider import DemoProvider
from chat import turns
from chat.models import Message
from chat.selectors import message_view
from chat.services import conversation_create, message_send
from keys.models import ProviderKey
from keys.services import KeyVaultError, RequestInfo, _seal_secret, provider_key_create
from tests.opened import error_of
from vault.services import OwnerCipher

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_server():
    """The demo provider on a free port (a developer's `make run` may hold 8765)."""
    with DemoProvider("127.0.0.1", 0) as server:
        yield server


def test_the_demo_preset_is_offered_only_in_development(alice_client, settings):
    settings.BYOK_DEMO_PROVIDER = False
    assert "Demo (local" not in alice_client.get(reverse("keys:add")).content.decode()
    settings.BYOK_DEMO_PROVIDER = True
    assert (
        "Demo (local, development only)" in alice_client.get(reverse("keys:add")).content.decode()
    )


def test_a_demo_key_cannot_be_created_outside_development(alice, settings):
    settings.BYOK_DEMO_PROVIDER = False
    with pytest.raises(KeyVaultError, match="only in development"):
        provider_key_create(
            owner=alice, preset_slug="demo", label="", secret="", info=RequestInfo(actor=alice)
        )


def test_a_demo_turn_goes_through_the_vault_the_worker_path_and_the_stream(
    alice, settings, demo_server
):
    settings.BYOK_DEMO_PROVIDER = True
    key = provider_key_create(
        owner=alice, preset_slug="demo", label="", secret="", info=RequestInfo(actor=alice)
    )
    assert key.label == "Demo (local, development only)"
    assert key.fingerprint == "no key"
    assert key.base_url == "http://127.0.0.1:8765/v1"
    # Moved to the test's own demo server, and sealed again for that address as the vault
    # would have sealed it there.
    ProviderKey.objects.filter(pk=key.pk).update(base_url=f"{demo_server.url}/v1")
    key.refresh_from_db()
    _seal_secret(key, "")
    key.save(update_fields=["sealed_secret", "fingerprint"])
    conversation = conversation_create(owner=alice, key=key, model="byok-demo")
    _, reply = message_send(conversation=conversation, text="Is anybody there?")
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE, error_of(reply)
    text = message_view(reply, OwnerCipher(alice)).text
    assert "local demo provider" in text
    assert "Is anybody there?" in text
    assert reply.output_tokens
