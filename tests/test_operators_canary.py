"""No operator page shows a key, a sealed value or conversation text.

Canary values are planted as a provider key, a conversation title, a system prompt, message
text and a TOTP seed; then every admin list (plain, searched for the canary, sorted by each
column, with each filter), add, change, history and delete page, the dashboard and its
fragment are opened as a superuser (the password page is a 404: test_operators_trace.py).
Neither a canary nor any sealed bytes may appear.
"""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.views.main import ORDER_VAR, SEARCH_VAR
from django.urls import NoReverseMatch, reverse

from accounts.models import TOTPDevice
from chat.models import PURPOSE_ERROR, Conversation, Message
from keys.models import ProviderKey
from tests.keys_helpers import add_key
from tests.operators_helpers import (
    fresh_cache,  # noqa: F401 (a fixture)
    make_staff,
    record_turn,
    verified_client,
)
from tests.security_helpers import enrol, make_conversation
from vault.models import DataKey
from vault.services import OwnerCipher

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_cache")]

CANARY_KEY = "sk-canary-KEY-7f3e9a1b2c4d5e6f00112233"
CANARY_TEXT = "canary-MESSAGE-text-5b8c1d"
CANARY_REPLY = "canary-REPLY-text-9e2f4a"
CANARY_TITLE = "canary-TITLE-3c7d"
CANARY_PROMPT = "canary-PROMPT-8a1b"
CANARIES = (CANARY_KEY, CANARY_TEXT, CANARY_REPLY, CANARY_TITLE, CANARY_PROMPT)
# Apps whose rows hold or point at sealed values: their lists are also sorted and filtered.
HOLDERS = {"accounts", "keys", "chat", "usage", "ops"}


def _sealed_values() -> list[bytes]:
    values: list[bytes] = []
    for model, fields in (
        (ProviderKey, ["sealed_secret"]),
        (Conversation, ["sealed_title", "sealed_system_prompt"]),
        (Message, ["sealed_content"]),
        (DataKey, ["wrapped"]),
        (TOTPDevice, ["sealed_seed"]),
    ):
        for row in model._default_manager.values_list(*fields):
            values.extend(bytes(value) for value in row if value)
    return values


def _forms_of(sealed: bytes) -> list[str]:
    """How sealed bytes could show up in HTML: hex, base64, Python's bytes repr."""
    return [
        sealed.hex()[:24],
        base64.b64encode(sealed).decode()[4:28],
        repr(sealed)[2:22],
    ]


@pytest.fixture
def planted(alice):
    key = add_key(alice, None, secret=CANARY_KEY, preset="openai", label="Canary key")
    conversation = make_conversation(
        alice, key, CANARY_TEXT, reply=CANARY_REPLY, title=CANARY_TITLE
    )
    conversation.sealed_system_prompt = OwnerCipher(alice).seal(
        "system_prompt", conversation.pk, CANARY_PROMPT
    )
    conversation.save(update_fields=["sealed_system_prompt"])
    reply = Message.objects.get(conversation=conversation, role="assistant")
    reply.status, reply.error_kind = "error", "invalid_key"
    reply.sealed_error = OwnerCipher(alice).seal(PURPOSE_ERROR, reply.pk, CANARY_TEXT)
    reply.save(update_fields=["status", "error_kind", "sealed_error"])
    enrol(alice)
    record_turn(alice, status="error", error_kind="invalid_key")
    return key


def _pages(client: Any) -> list[str]:
    urls = [reverse("admin:index"), reverse("admin:dashboard_health")]
    site = admin.site
    for model, model_admin in site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        changelist = reverse("admin:{}_{}_changelist".format(*info))
        urls.append(changelist)
        # The shared prefix of every canary: the page echoes it, never a whole canary.
        urls.append(f"{changelist}?{SEARCH_VAR}=canary-")
        if info[0] in HOLDERS:
            for index in range(len(model_admin.get_list_display(None))):  # type: ignore[arg-type]
                urls.append(f"{changelist}?{ORDER_VAR}={index}")
        with contextlib.suppress(NoReverseMatch):
            urls.append(reverse("admin:{}_{}_add".format(*info)))
        for obj in model._default_manager.all()[:3]:
            for view in ("change", "history", "delete"):
                urls.append(reverse(f"admin:{info[0]}_{info[1]}_{view}", args=[obj.pk]))
    # Every filter choice of every list, as the admin renders them.
    for model in site._registry:
        info = (model._meta.app_label, model._meta.model_name)
        if info[0] not in HOLDERS:
            continue
        response = client.get(reverse("admin:{}_{}_changelist".format(*info)))
        for spec in response.context["cl"].filter_specs:
            for choice in spec.choices(response.context["cl"]):
                base = reverse("admin:{}_{}_changelist".format(*info))
                urls.append(base + choice["query_string"])
    return urls


def test_no_admin_page_shows_a_canary_or_sealed_bytes(planted, client):
    superuser = make_staff("root@example.com", superuser=True)
    client = verified_client(superuser, client)
    sealed = _sealed_values()
    assert len(sealed) >= 6  # key, title, prompt, 2 messages, data key, TOTP seed
    forms = [form for value in sealed for form in _forms_of(value)]
    pages = _pages(client)
    assert len(pages) > 100
    for url in pages:
        response = client.get(url)
        assert response.status_code in (200, 302, 403), (url, response.status_code)
        body = response.content.decode()
        for canary in CANARIES:
            assert canary not in body, (url, canary)
        for form in forms:
            assert form not in body, (url, "sealed bytes")
        assert "<memory at" not in body, url


def test_message_admin_has_no_text_fields():
    from ops.admin import ConversationAdmin, MessageAdmin

    for model_admin in (MessageAdmin, ConversationAdmin):
        names = {*model_admin.fields, *model_admin.list_display, *model_admin.search_fields}
        assert not {n for n in names if "sealed" in n or n == "notice"}
