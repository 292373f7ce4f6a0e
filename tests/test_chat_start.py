"""Start typing at once: the composer on /chat/ with a key and model picker, the chat created
by its first message, and the key and model switched for the next turn inside a chat."""

from __future__ import annotations

import pytest
from django.urls import reverse

from chat import selectors, services, turns
from chat.models import Conversation, Message
from chat.services import ChatError
from keys.models import ProviderKey
from tests.chat_helpers import send, start_chat
from tests.keys_helpers import add_key

pytestmark = pytest.mark.django_db

Status = ProviderKey.Status


def keyed(owner, fake, label, status, **extra):
    key = add_key(owner, fake, label=label, **extra)
    ProviderKey.objects.filter(pk=key.pk).update(status=status)
    key.refresh_from_db()
    return key


def test_the_picker_lists_working_keys_first_and_never_preselects_one_that_is_not(
    alice, fake_provider
):
    wrong = keyed(alice, fake_provider, "A wrong", Status.INVALID)
    unverified = keyed(alice, fake_provider, "B unverified", Status.UNVERIFIED)
    picker = selectors.model_picker(owner=alice)
    assert picker.key is None and picker.model == ""  # nothing that works: nothing chosen
    assert [o.key for o in picker.options] == [unverified, wrong]
    assert picker.options[1].label == "A wrong · Custom OpenAI-compatible — Invalid"

    valid = keyed(alice, fake_provider, "C valid", Status.VALID, preset="openai", base_url=None)
    picker = selectors.model_picker(owner=alice)
    assert picker.options[0].key == valid and picker.key == valid
    assert picker.model == "gpt-5.4"  # its provider's first model


def test_a_new_chat_remembers_the_last_key_and_model_used(alice, fake_provider):
    keyed(alice, fake_provider, "First", Status.VALID)
    second = keyed(alice, fake_provider, "Second", Status.VALID)
    services.conversation_start(owner=alice, key=second, model="my-model", text="Hi")
    picker = selectors.model_picker(owner=alice)
    assert picker.key == second and picker.model == "my-model"
    # ...unless that key stopped working.
    ProviderKey.objects.filter(pk=second.pk).update(status=Status.INVALID)
    chosen = selectors.model_picker(owner=alice).key
    assert chosen is not None and chosen.label == "First"


def test_the_home_page_is_a_composer_ready_to_type(alice_client, alice, fake_provider):
    key = keyed(alice, fake_provider, "Work", Status.VALID)
    html = alice_client.get(reverse("chat:home")).content.decode()
    assert 'id="composer-text"' in html and "autofocus" in html
    assert f'<option value="{key.pk}" selected>Work · Custom OpenAI-compatible — Valid' in html
    assert not Conversation.objects.exists()  # opening it creates nothing


def test_the_first_message_creates_the_conversation_and_a_refused_one_leaves_none(
    alice_client, alice, fake_provider, settings
):
    key = keyed(alice, fake_provider, "Work", Status.VALID)
    settings.BYOK_MAX_MESSAGE_CHARS = 20
    refused = alice_client.post(
        reverse("chat:home"),
        {"key": str(key.pk), "model": "gpt-test", "text": "x" * 50},
        headers={"HX-Request": "true"},
    )
    assert refused.status_code == 422 and "the limit is 20" in refused.content.decode()
    assert not Conversation.objects.exists() and not Message.objects.exists()

    sent = alice_client.post(
        reverse("chat:home"),
        {"key": str(key.pk), "model": "gpt-test", "text": "Hello **there**"},
        headers={"HX-Request": "true"},
    )
    conversation = Conversation.objects.get()
    assert sent["HX-Redirect"] == reverse("chat:conversation", args=[conversation.pk])
    assert [m.role for m in conversation.messages.order_by("created_at")] == ["user", "assistant"]


@pytest.mark.parametrize(
    "bad", [{"model": "two words"}, {"model": ""}, {"key": ""}, {"key": "not-a-uuid"}]
)
def test_a_start_without_a_usable_key_or_model_says_why(alice_client, alice, fake_provider, bad):
    key = keyed(alice, fake_provider, "Work", Status.VALID)
    data = {"key": str(key.pk), "model": "gpt-test", "text": "Hi", **bad}
    response = alice_client.post(reverse("chat:home"), data, headers={"HX-Request": "true"})
    assert response.status_code == 422
    assert not Conversation.objects.exists()


def test_the_model_and_key_switch_for_the_next_turn(alice, fake_provider):
    conversation, first_key = start_chat(alice, fake_provider, label="First")
    fake_provider.script(text="one")
    _, first = send(conversation, "Hello")
    turns.run_turn(str(first.pk))
    other = add_key(alice, fake_provider, label="Other")
    _, reply = services.message_send(
        conversation=conversation, text="Now you", key=other, model="gpt-other"
    )
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    conversation.refresh_from_db()
    assert conversation.provider_key == other and conversation.model == "gpt-other"
    assert reply.model == "gpt-other" and reply.provider_key == other
    first.refresh_from_db()
    assert first.model == "gpt-test" and first.provider_key == first_key  # as it was written
    bodies = [r.body for r in fake_provider.requests if r.method == "POST"]
    assert bodies[-1]["model"] == "gpt-other"


def test_switching_to_a_revoked_or_another_users_key_changes_nothing(alice, bob, fake_provider):
    conversation, key = start_chat(alice, fake_provider)
    revoked = keyed(alice, fake_provider, "Old", Status.REVOKED)
    bobs = add_key(bob, fake_provider)
    for bad in (revoked, bobs):
        with pytest.raises(ChatError):
            services.message_send(conversation=conversation, text="Hi", key=bad)
    conversation.refresh_from_db()
    assert conversation.provider_key == key and not conversation.messages.exists()


def test_the_send_view_switches_and_refuses_another_users_key(
    alice_client, alice, bob, fake_provider
):
    conversation, _ = start_chat(alice, fake_provider)
    bobs = add_key(bob, fake_provider)
    url = reverse("chat:send", args=[conversation.pk])
    refused = alice_client.post(
        url,
        {"text": "Hi", "key": str(bobs.pk), "model": "gpt-test"},
        headers={"HX-Request": "true"},
    )
    assert refused.status_code == 422 and "Pick one of your keys." in refused.content.decode()
    assert not conversation.messages.exists()
    mine = add_key(alice, fake_provider, label="Mine")
    sent = alice_client.post(
        url, {"text": "Hi", "key": str(mine.pk), "model": "gpt-new"}, headers={"HX-Request": "true"}
    )
    html = sent.content.decode()
    assert sent.status_code == 200
    assert '<span id="chat-model" hx-swap-oob="true">gpt-new · Mine (' in html
    conversation.refresh_from_db()
    assert conversation.provider_key == mine and conversation.model == "gpt-new"


def test_a_reply_copies_as_its_markdown_for_its_owner_only(alice_client, alice, bob, fake_provider):
    from django.test import Client

    from tests.security_helpers import make_conversation

    key = add_key(alice, fake_provider)
    conversation = make_conversation(alice, key, "Question", reply="**Bold** and `code`\n\n- item")
    reply = conversation.messages.get(role="assistant")
    response = alice_client.get(reverse("chat:markdown", args=[reply.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == "**Bold** and `code`\n\n- item"
    assert response["Cache-Control"] == "no-store"
    question = conversation.messages.get(role="user")
    assert alice_client.get(reverse("chat:markdown", args=[question.pk])).status_code == 404
    other = Client()
    other.force_login(bob)
    assert other.get(reverse("chat:markdown", args=[reply.pk])).status_code == 404


def test_without_javascript_a_refused_message_comes_back_in_the_box_with_the_reason(
    alice_client, alice, fake_provider, settings
):
    settings.BYOK_MAX_MESSAGE_CHARS = 20
    key = keyed(alice, fake_provider, "Work", Status.VALID)
    text = "A draft that is far too long <b>to send</b>"
    home = alice_client.post(reverse("chat:home"), {"key": str(key.pk), "model": "m", "text": text})
    assert home.status_code == 422
    html = home.content.decode()
    assert "A draft that is far too long &lt;b&gt;to send&lt;/b&gt;</textarea>" in html
    assert "the limit is 20" in html and not Conversation.objects.exists()

    conversation, _ = start_chat(alice, fake_provider)
    sent = alice_client.post(reverse("chat:send", args=[conversation.pk]), {"text": text})
    assert sent.status_code == 422
    assert "far too long &lt;b&gt;to send&lt;/b&gt;</textarea>" in sent.content.decode()
    assert not conversation.messages.exists()
