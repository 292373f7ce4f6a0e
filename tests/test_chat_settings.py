"""Per-conversation settings: the settings page, what each protocol is sent, the caps still
bounding the length, and what every reply records it was sent."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from chat import turns
from chat.models import PURPOSE_SYSTEM, Conversation, Message
from chat.selectors import conversation_system_prompt, message_view
from chat.services import ChatError, conversation_settings_update
from providers.reasoning import (
    ANTHROPIC_MESSAGES,
    GEMINI,
    OPENAI_CHAT,
    Effort,
    ReasoningStyle,
    generation_for,
    reasoning_style,
)
from tests.chat_helpers import CHAT_PATHS, send, start_chat, vendor_chat
from tests.usage_helpers import price
from usage.services import spend_cap_set
from vault.services import OwnerCipher

pytestmark = pytest.mark.django_db


def settings_url(conversation: Conversation) -> str:
    return reverse("chat:settings", args=[conversation.pk])


def update(conversation, **values):
    fields: dict[str, Any] = {
        "system_prompt": "",
        "temperature": None,
        "max_output_tokens": None,
        "reasoning_effort": "",
    }
    fields.update(values)
    return conversation_settings_update(conversation=conversation, **fields)


def chat_bodies(fake):
    return [r.body for r in fake.requests if r.method == "POST"]


def run_turn(conversation, fake, preset="custom", text="Hello there"):
    fake.script(path=CHAT_PATHS[preset], text="Fine, thanks.")
    _, reply = send(conversation, text)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    return reply


# --- the settings page -------------------------------------------------------------------


def test_the_settings_page_shows_the_conversations_settings(alice_client, alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    update(conversation, system_prompt="Be terse.", temperature=0.3, max_output_tokens=900)
    response = alice_client.get(settings_url(conversation))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Be terse." in page
    assert 'name="temperature"' in page and 'value="0.3"' in page
    assert 'name="max_output_tokens"' in page and 'value="900"' in page
    # gpt-test has no reasoning effort: none is offered.
    assert 'name="reasoning_effort"' not in page
    # The Options menu links to it and sums the settings up.
    detail = alice_client.get(reverse("chat:conversation", args=[conversation.pk])).content
    assert settings_url(conversation).encode() in detail
    assert "temp 0.3 · max 900 tokens".encode() in detail


@pytest.mark.parametrize(
    ("preset", "model", "effort", "temperature"),
    [
        ("openai", "gpt-5-mini", True, False),
        ("anthropic", "claude-sonnet-4-6", True, True),
        ("gemini", "gemini-2.5-flash", True, True),
        ("anthropic", "claude-3-5-haiku-latest", False, True),
    ],
)
def test_the_effort_is_offered_only_where_the_model_has_one(
    alice_client, alice, fake_provider, preset, model, effort, temperature
):
    conversation, _ = vendor_chat(alice, fake_provider, preset, model)
    page = alice_client.get(settings_url(conversation)).content.decode()
    assert ('name="reasoning_effort"' in page) is effort
    assert ('name="temperature"' in page) is temperature
    if not temperature:
        assert "always uses its own temperature" in page


def test_valid_settings_are_saved_and_the_system_prompt_stays_sealed(
    alice_client, alice, fake_provider
):
    conversation, _ = vendor_chat(alice, fake_provider, "anthropic", "claude-opus-4-7")
    response = alice_client.post(
        settings_url(conversation),
        {
            "system_prompt": "  Answer like a pirate.  ",
            "temperature": "",
            "max_output_tokens": "2500",
            "reasoning_effort": "high",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("chat:conversation", args=[conversation.pk])
    conversation.refresh_from_db()
    assert conversation.temperature is None
    assert conversation.max_output_tokens == 2500
    assert conversation.reasoning_effort == "high"
    assert conversation_system_prompt(conversation) == "Answer like a pirate."
    assert b"pirate" not in bytes(conversation.sealed_system_prompt)
    # Blank again means the defaults again.
    alice_client.post(settings_url(conversation), {"system_prompt": "", "reasoning_effort": ""})
    conversation.refresh_from_db()
    assert (conversation.max_output_tokens, conversation.reasoning_effort) == (None, "")
    assert conversation_system_prompt(conversation) == ""


BAD_POSTS = [
    ("gpt-test", {"temperature": "2.5"}, "temperature", "between 0 and 2"),
    ("gpt-test", {"temperature": "-0.1"}, "temperature", "between 0 and 2"),
    ("gpt-test", {"temperature": "nan"}, "temperature", "between 0 and 2"),
    ("gpt-test", {"temperature": "warm"}, "temperature", "between 0 and 2"),
    ("gpt-test", {"max_output_tokens": "-5"}, "max_output_tokens", "between 1 and 128,000"),
    ("gpt-test", {"max_output_tokens": "0"}, "max_output_tokens", "between 1 and 128,000"),
    ("gpt-test", {"max_output_tokens": "9" * 30}, "max_output_tokens", "between 1 and 128,000"),
    ("gpt-test", {"max_output_tokens": "1.5"}, "max_output_tokens", "whole number"),
    ("o3-mini", {"reasoning_effort": "extreme"}, "reasoning_effort", "low, medium or high"),
    ("gpt-test", {"reasoning_effort": "high"}, "reasoning_effort", "no reasoning effort"),
    ("gpt-5-mini", {"temperature": "0.3"}, "temperature", "its own temperature"),
    ("gpt-test", {"system_prompt": "x" * 1001}, "system_prompt", "the limit is 1,000"),
]


@pytest.mark.parametrize(("model", "post", "field", "message"), BAD_POSTS)
def test_bad_settings_get_an_error_next_to_the_field_and_change_nothing(
    alice_client, alice, fake_provider, settings, model, post, field, message
):
    settings.BYOK_MAX_MESSAGE_CHARS = 1000
    conversation, _ = start_chat(alice, fake_provider, model=model)
    update(conversation, system_prompt="Original.", max_output_tokens=700)
    before = Conversation.objects.get(pk=conversation.pk)
    data = {"system_prompt": "Changed.", "max_output_tokens": "800", **post}
    response = alice_client.post(settings_url(conversation), data)
    assert response.status_code == 422
    page = response.content.decode()
    assert message in page
    assert f'id="id_{field}_error"' in page
    # Shown with its error even where the model would not offer it, tied to the field.
    assert f'aria-describedby="id_{field}_error' in page or (
        f'aria-describedby="id_{field}_helptext id_{field}_error"' in page
    )
    assert 'aria-invalid="true"' in page
    after = Conversation.objects.get(pk=conversation.pk)
    assert bytes(after.sealed_system_prompt) == bytes(before.sealed_system_prompt)
    assert (after.temperature, after.max_output_tokens, after.reasoning_effort) == (
        None,
        700,
        "",
    )


def test_claude_cannot_take_a_temperature_and_an_effort_at_once(alice, fake_provider):
    conversation, _ = vendor_chat(alice, fake_provider, "anthropic", "claude-sonnet-4-6")
    with pytest.raises(ChatError, match="while it thinks") as refused:
        update(conversation, temperature=0.5, reasoning_effort="low")
    assert refused.value.field == "temperature"
    conversation.refresh_from_db()
    assert conversation.temperature is None and conversation.reasoning_effort == ""
    # Either one alone is fine.
    update(conversation, temperature=0.5)
    update(conversation, reasoning_effort="low")


@pytest.mark.parametrize(
    "values",
    [
        {"temperature": float("nan")},
        {"temperature": float("inf")},
        {"temperature": True},
        {"max_output_tokens": 10**9},
        {"max_output_tokens": -1},
        {"reasoning_effort": "max"},
    ],
)
def test_the_service_refuses_what_the_form_would(alice, fake_provider, values):
    # gpt-oss takes a temperature and an effort: only the values themselves are wrong.
    conversation, _ = start_chat(alice, fake_provider, model="gpt-oss-20b")
    with pytest.raises(ChatError):
        update(conversation, **values)
    conversation.refresh_from_db()
    assert (conversation.temperature, conversation.max_output_tokens) == (None, None)
    assert conversation.reasoning_effort == ""


def test_another_users_settings_are_a_404_and_nothing_changes(client, bob, alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    update(conversation, system_prompt="Alice's prompt.")
    before = bytes(Conversation.objects.get(pk=conversation.pk).sealed_system_prompt)
    client.force_login(bob)
    assert client.get(settings_url(conversation)).status_code == 404
    response = client.post(
        settings_url(conversation), {"system_prompt": "Bob was here.", "temperature": "1"}
    )
    assert response.status_code == 404
    after = Conversation.objects.get(pk=conversation.pk)
    assert bytes(after.sealed_system_prompt) == before
    assert after.temperature is None


def test_the_settings_page_needs_a_login_and_takes_only_get_and_post(
    alice_client, alice, fake_provider
):
    conversation, _ = start_chat(alice, fake_provider)
    response = Client().get(settings_url(conversation))
    assert response.status_code == 302 and "/login" in response["Location"]
    assert alice_client.put(settings_url(conversation)).status_code == 405
    assert alice_client.delete(settings_url(conversation)).status_code == 405


# --- the rule: which models take an effort ----------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "model", "style"),
    [
        (OPENAI_CHAT, "gpt-5.4", ReasoningStyle.OPENAI_EFFORT),
        (OPENAI_CHAT, "gpt-5-mini", ReasoningStyle.OPENAI_EFFORT),
        (OPENAI_CHAT, "openai/gpt-5-mini", ReasoningStyle.OPENAI_EFFORT),
        (OPENAI_CHAT, "o3", ReasoningStyle.OPENAI_EFFORT),
        (OPENAI_CHAT, "o4-mini-2025-04-16", ReasoningStyle.OPENAI_EFFORT),
        (OPENAI_CHAT, "openai/gpt-oss-120b", ReasoningStyle.OPENAI_EFFORT),
        (OPENAI_CHAT, "o1-mini", ReasoningStyle.NONE),
        (OPENAI_CHAT, "gpt-5-chat-latest", ReasoningStyle.NONE),
        (OPENAI_CHAT, "gpt-4.1", ReasoningStyle.NONE),
        (OPENAI_CHAT, "gpt-4o-mini", ReasoningStyle.NONE),
        (OPENAI_CHAT, "llama-3.3-70b-versatile", ReasoningStyle.NONE),
        (OPENAI_CHAT, "deepseek-reasoner", ReasoningStyle.NONE),
        (ANTHROPIC_MESSAGES, "claude-opus-4-7", ReasoningStyle.ANTHROPIC_ADAPTIVE),
        (ANTHROPIC_MESSAGES, "claude-sonnet-4-6", ReasoningStyle.ANTHROPIC_ADAPTIVE),
        (ANTHROPIC_MESSAGES, "claude-haiku-4-5", ReasoningStyle.ANTHROPIC_BUDGET),
        (ANTHROPIC_MESSAGES, "claude-haiku-4-5-20251001", ReasoningStyle.ANTHROPIC_BUDGET),
        (ANTHROPIC_MESSAGES, "claude-sonnet-4-20250514", ReasoningStyle.ANTHROPIC_BUDGET),
        (ANTHROPIC_MESSAGES, "claude-opus-4-1-20250805", ReasoningStyle.ANTHROPIC_BUDGET),
        (ANTHROPIC_MESSAGES, "claude-3-7-sonnet-latest", ReasoningStyle.ANTHROPIC_BUDGET),
        (ANTHROPIC_MESSAGES, "claude-3-5-haiku-latest", ReasoningStyle.NONE),
        (GEMINI, "gemini-2.5-pro", ReasoningStyle.GEMINI_BUDGET),
        (GEMINI, "gemini-2.5-flash", ReasoningStyle.GEMINI_BUDGET),
        (GEMINI, "models/gemini-2.5-flash-lite", ReasoningStyle.GEMINI_BUDGET),
        (GEMINI, "gemini-2.0-flash", ReasoningStyle.NONE),
        # A protocol decides: an OpenAI model name at Anthropic is no reasoning model there.
        (ANTHROPIC_MESSAGES, "o3", ReasoningStyle.NONE),
    ],
)
def test_the_reasoning_rule_covers_the_catalogues_models(protocol, model, style):
    assert reasoning_style(protocol, model) is style


@pytest.mark.parametrize(
    ("protocol", "model", "limit", "effort", "budget"),
    [
        (ANTHROPIC_MESSAGES, "claude-haiku-4-5", 8000, "low", 2000),
        (ANTHROPIC_MESSAGES, "claude-haiku-4-5", 8000, "medium", 4000),
        (ANTHROPIC_MESSAGES, "claude-haiku-4-5", 8000, "high", 6000),
        # Anthropic's minimum of 1,024, still below the limit...
        (ANTHROPIC_MESSAGES, "claude-haiku-4-5", 2000, "low", 1024),
        # ...and no thinking at all when the limit leaves no room for it.
        (ANTHROPIC_MESSAGES, "claude-haiku-4-5", 1024, "high", None),
        (GEMINI, "gemini-2.5-pro", 100_000, "high", 32_768),
        (GEMINI, "gemini-2.5-flash-lite", 1000, "low", 512),
        (GEMINI, "gemini-2.5-flash-lite", 512, "low", None),
    ],
)
def test_a_thinking_budget_is_a_share_of_the_limit_inside_the_models_range(
    protocol, model, limit, effort, budget
):
    generation = generation_for(protocol, model, max_tokens=limit, temperature=None, effort=effort)
    assert generation.thinking_budget == budget
    assert generation.effort == (Effort(effort) if budget else None)
    assert generation.max_tokens == limit


# --- what each protocol is sent, over real HTTP ------------------------------------------


def test_openai_reasoning_models_get_reasoning_effort_and_no_temperature(alice, fake_provider):
    conversation, _ = vendor_chat(alice, fake_provider, "openai", "gpt-5-mini")
    update(conversation, max_output_tokens=1200, reasoning_effort="high")
    reply = run_turn(conversation, fake_provider)
    assert reply.status == Message.Status.DONE
    [body] = chat_bodies(fake_provider)
    assert body["max_completion_tokens"] == 1200
    assert body["reasoning_effort"] == "high"
    assert "temperature" not in body and "max_tokens" not in body
    assert (reply.temperature, reply.max_output_tokens, reply.reasoning_effort) == (
        None,
        1200,
        "high",
    )


def test_other_openai_compatible_models_get_temperature_and_no_effort(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider, model="gpt-test")
    update(conversation, temperature=0.3, max_output_tokens=777)
    reply = run_turn(conversation, fake_provider)
    [body] = chat_bodies(fake_provider)
    assert body["max_tokens"] == 777
    assert body["temperature"] == 0.3
    assert "reasoning_effort" not in body
    assert (reply.temperature, reply.max_output_tokens, reply.reasoning_effort) == (0.3, 777, "")
    facts = message_view(reply, OwnerCipher(alice)).facts
    assert facts["usage"].endswith(" · temp 0.3 · max 777 tokens")


def test_claude_4_6_gets_adaptive_thinking_with_the_effort(alice, fake_provider):
    conversation, _ = vendor_chat(alice, fake_provider, "anthropic", "claude-sonnet-4-6")
    update(conversation, max_output_tokens=3000, reasoning_effort="medium")
    reply = run_turn(conversation, fake_provider, "anthropic")
    assert reply.status == Message.Status.DONE
    [body] = chat_bodies(fake_provider)
    assert body["max_tokens"] == 3000
    assert body["thinking"] == {"type": "adaptive"}
    assert body["output_config"] == {"effort": "medium"}
    assert "temperature" not in body
    assert (reply.max_output_tokens, reply.reasoning_effort) == (3000, "medium")


def test_older_claude_gets_a_thinking_budget_below_its_limit(alice, fake_provider):
    conversation, _ = vendor_chat(alice, fake_provider, "anthropic", "claude-haiku-4-5")
    update(conversation, max_output_tokens=8000, reasoning_effort="high")
    reply = run_turn(conversation, fake_provider, "anthropic")
    [body] = chat_bodies(fake_provider)
    assert body["max_tokens"] == 8000
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 6000}
    assert "output_config" not in body and "temperature" not in body
    assert reply.reasoning_effort == "high"


def test_claude_without_an_effort_gets_its_temperature(alice, fake_provider):
    conversation, _ = vendor_chat(alice, fake_provider, "anthropic", "claude-sonnet-4-6")
    update(conversation, temperature=0.4)
    reply = run_turn(conversation, fake_provider, "anthropic")
    [body] = chat_bodies(fake_provider)
    assert body["temperature"] == 0.4
    assert "thinking" not in body and "output_config" not in body
    assert (reply.temperature, reply.reasoning_effort) == (0.4, "")


def test_gemini_2_5_gets_a_thinking_budget_and_its_temperature(alice, fake_provider, settings):
    conversation, _ = vendor_chat(alice, fake_provider, "gemini", "gemini-2.5-flash")
    update(conversation, temperature=0.9, max_output_tokens=4000, reasoning_effort="low")
    reply = run_turn(conversation, fake_provider, "gemini")
    assert reply.status == Message.Status.DONE
    [body] = chat_bodies(fake_provider)
    assert body["generationConfig"] == {
        "maxOutputTokens": 4000,
        "temperature": 0.9,
        "thinkingConfig": {"thinkingBudget": 1000},
    }
    assert (reply.temperature, reply.max_output_tokens, reply.reasoning_effort) == (
        0.9,
        4000,
        "low",
    )
    facts = message_view(reply, OwnerCipher(alice)).facts
    assert facts["usage"].endswith(" · temp 0.9 · effort low · max 4,000 tokens")


def test_without_settings_each_turn_gets_the_defaults(alice, fake_provider, settings):
    settings.BYOK_MAX_OUTPUT_TOKENS = 2048
    conversation, _ = vendor_chat(alice, fake_provider, "gemini", "gemini-2.5-pro")
    reply = run_turn(conversation, fake_provider, "gemini")
    [body] = chat_bodies(fake_provider)
    assert body["generationConfig"] == {"maxOutputTokens": 2048}
    assert (reply.temperature, reply.max_output_tokens, reply.reasoning_effort) == (
        None,
        2048,
        "",
    )
    # Defaults say nothing in the small print.
    usage = message_view(reply, OwnerCipher(alice)).facts["usage"]
    assert " out" in usage
    assert not {"temp", "effort", "max"} & set(usage.split())


def test_a_system_prompt_changed_later_is_sent_from_the_next_turn(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    run_turn(conversation, fake_provider)
    update(conversation, system_prompt="You are a ship's cat.")
    run_turn(conversation, fake_provider, text="And now?")
    first, second = chat_bodies(fake_provider)
    assert first["messages"][0]["role"] == "user"
    assert second["messages"][0] == {"role": "system", "content": "You are a ship's cat."}
    sealed = Conversation.objects.get(pk=conversation.pk).sealed_system_prompt
    assert OwnerCipher(alice).open(PURPOSE_SYSTEM, conversation.pk, sealed) == (
        "You are a ship's cat."
    )


# --- the caps still bound the length -----------------------------------------------------


def test_a_cap_lowers_the_limit_below_the_users_setting(alice, fake_provider):
    price("custom", "gpt-test", input=10.0, output=10.0)
    conversation, _ = start_chat(alice, fake_provider)
    update(conversation, max_output_tokens=50_000, temperature=0.2)
    # $0.012 at $10/M affords about 1,100 output tokens after the input's bound.
    spend_cap_set(owner=alice, key_id=None, limit_micro=12_000)
    reply = run_turn(conversation, fake_provider)
    assert reply.status == Message.Status.DONE
    [body] = chat_bodies(fake_provider)
    sent = body["max_tokens"]
    assert 256 <= sent < 2_000
    assert reply.max_output_tokens == sent  # the record is what was sent, not the setting
    assert f"at most {sent:,} tokens long" in reply.notice
    facts = message_view(reply, OwnerCipher(alice)).facts
    assert facts["usage"].endswith(f" · temp 0.2 · max {sent:,} tokens")


def test_a_setting_below_what_the_cap_affords_is_sent_as_set(alice, fake_provider):
    price("custom", "gpt-test", input=10.0, output=10.0)
    conversation, _ = start_chat(alice, fake_provider)
    update(conversation, max_output_tokens=300)
    spend_cap_set(owner=alice, key_id=None, limit_micro=12_000)
    reply = run_turn(conversation, fake_provider)
    [body] = chat_bodies(fake_provider)
    assert body["max_tokens"] == 300
    assert reply.max_output_tokens == 300
    assert "spend cap" not in reply.notice


def test_the_thinking_budget_follows_the_limit_the_cap_affords(alice, fake_provider):
    price("anthropic", "claude-haiku-4-5", input=10.0, output=10.0)
    conversation, _ = vendor_chat(alice, fake_provider, "anthropic", "claude-haiku-4-5")
    update(conversation, max_output_tokens=64_000, reasoning_effort="high")
    spend_cap_set(owner=alice, key_id=None, limit_micro=30_000)
    reply = run_turn(conversation, fake_provider, "anthropic")
    [body] = chat_bodies(fake_provider)
    limit = body["max_tokens"]
    assert limit < 3_000
    assert body["thinking"] == {"type": "enabled", "budget_tokens": max(1024, limit * 3 // 4)}
    assert body["thinking"]["budget_tokens"] < limit
    assert reply.max_output_tokens == limit and reply.reasoning_effort == "high"


# --- recorded per turn ---------------------------------------------------------------------


def test_each_reply_keeps_what_it_was_sent_when_the_settings_change(alice, fake_provider, settings):
    settings.BYOK_MAX_OUTPUT_TOKENS = 3000
    conversation, _ = vendor_chat(alice, fake_provider, "openai", "o4-mini")
    update(conversation, reasoning_effort="low", max_output_tokens=1000)
    first = run_turn(conversation, fake_provider)
    update(conversation, reasoning_effort="high")  # and the length back to the default
    second = run_turn(conversation, fake_provider, text="Think harder.")
    first.refresh_from_db()
    assert (first.reasoning_effort, first.max_output_tokens) == ("low", 1000)
    assert (second.reasoning_effort, second.max_output_tokens) == ("high", 3000)
    bodies = chat_bodies(fake_provider)
    assert [b["reasoning_effort"] for b in bodies] == ["low", "high"]
    assert [b["max_completion_tokens"] for b in bodies] == [1000, 3000]
    # Each reply's small print says what it was sent.
    cipher = OwnerCipher(alice)
    assert message_view(first, cipher).facts["usage"].endswith(" · effort low · max 1,000 tokens")
    assert message_view(second, cipher).facts["usage"].endswith(" · effort high")


def test_a_reply_that_sent_nothing_records_nothing(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    update(conversation, temperature=1.1)
    price("custom", "gpt-test", input=10.0, output=10.0)
    spend_cap_set(owner=alice, key_id=None, limit_micro=100)  # nothing affordable: refused
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR and reply.error_kind == "budget"
    assert chat_bodies(fake_provider) == []
    assert (reply.temperature, reply.max_output_tokens, reply.reasoning_effort) == (
        None,
        None,
        "",
    )
