"""Titles written by the model (opt-in): one small call after the first reply, through the
completion engine with the owner's key, recorded as a usage event of its own."""

from __future__ import annotations

import csv
import io
import json
import uuid
import zipfile
from datetime import timedelta

import pytest
from celery.signals import before_task_publish
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from chat import services, tasks, titles
from chat.models import Conversation, Message, TitleCall, TitleSource
from chat.selectors import conversation_title
from privacy import exports
from privacy.models import AccountExport
from tests.chat_helpers import CHAT_PATHS, send, start_chat, vendor_chat, wait_final
from tests.usage_helpers import price
from tests.waiting import wait_until
from usage.models import UsageEvent
from usage.prices import TokenCounts, cost_micro, price_for
from usage.services import spend_cap_set

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "What is the **capital** of France? Answer in one `word`, please."
ANSWER = "Paris. It has been the capital of France for centuries."
CHAT = "/chat/completions"


def posts(fake):
    return [r for r in fake.requests if r.method == "POST"]


def opt_in(user, on=True):
    user.model_titles = on
    user.save(update_fields=["model_titles"])


def title_of(conversation):
    conversation.refresh_from_db()
    return conversation_title(conversation)


def title_call_ended(conversation):
    def ended():
        call = TitleCall.objects.filter(conversation=conversation).first()
        return call is not None and call.status not in {"queued", "running"}

    wait_until(ended, "the title call did not end")
    return TitleCall.objects.get(conversation=conversation)


def first_turn(owner, fake, *, title_script=None, text=QUESTION):
    """A conversation whose first reply is done, through the real worker."""
    fake.script(text=ANSWER, path=CHAT)
    if title_script is not None:
        fake.script(path=CHAT, **title_script)
    conversation, key = start_chat(owner, fake)
    _, reply = send(conversation, text)
    reply = wait_final(reply)
    assert reply.status == Message.Status.DONE
    return conversation, key, reply


# --- cleaning ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ('**"Capital of France"**', "Capital of France"),
        ("Title: The capital of *France*.", "The capital of France"),
        ("**Title:** Paris facts", "Paris facts"),
        ("**Title**: Paris facts", "Paris facts"),
        ("Title: **Paris facts**", "Paris facts"),
        ("Weather in Paris.", "Weather in Paris"),
        ("“Paris, the capital”\nSecond line is ignored", "Paris, the capital"),
        ("# `Paris` facts", "Paris facts"),
        ("  \n\n", ""),
        ('""', ""),
    ],
)
def test_the_models_answer_is_cleaned_to_a_plain_title(answer, title):
    assert titles.title_clean(answer) == title


def test_a_long_answer_is_clipped_like_a_first_message_title():
    cleaned = titles.title_clean("word " * 40)
    assert len(cleaned) == services.TITLE_LENGTH and cleaned.endswith("…")


# --- off: nothing happens ----------------------------------------------------------------------


def test_with_the_setting_off_no_title_call_is_made(alice, fake_provider):
    fake_provider.script(text=ANSWER, path=CHAT)
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation, QUESTION)
    tasks.generate_reply(str(reply.pk))  # the task's body, here: it would queue the title call
    assert Message.objects.get(pk=reply.pk).status == Message.Status.DONE
    assert titles.title_call_queue(reply_id=reply.pk) is None
    assert len(posts(fake_provider)) == 1
    assert not TitleCall.objects.exists()
    assert not UsageEvent.objects.filter(purpose=UsageEvent.Purpose.TITLE).exists()
    assert title_of(conversation) == services._title_from(QUESTION)


# --- on: the model writes it -------------------------------------------------------------------


def test_the_model_writes_the_title_after_the_first_reply_billed_as_a_title(
    alice, alice_client, fake_provider, celery_worker
):
    price("custom", "gpt-test", input=3.0, output=15.0)
    opt_in(alice)
    conversation, key, reply = first_turn(
        alice,
        fake_provider,
        title_script={
            "text": '**"Capital of France, briefly"**',
            "usage": {"input_tokens": 61, "output_tokens": 9},
        },
    )
    call = title_call_ended(conversation)
    assert call.status == TitleCall.Status.DONE
    assert title_of(conversation) == "Capital of France, briefly"
    assert conversation.title_source == TitleSource.MODEL

    chat, title = posts(fake_provider)
    assert title.body["model"] == "gpt-test"
    assert title.body["max_tokens"] == 20
    assert title.api_key == chat.api_key  # the owner's own key
    sent = json.dumps(title.body["messages"])
    assert "capital" in sent and "Paris. It has been" in sent  # the question and the reply
    assert "at most 6 words" in sent

    event = UsageEvent.objects.get(message_id=call.pk)
    assert event.purpose == UsageEvent.Purpose.TITLE
    assert event.conversation_id == conversation.pk and event.key_id == key.pk
    assert (event.input_tokens, event.output_tokens) == (61, 9)
    model_price = price_for("custom", "gpt-test")
    assert model_price is not None
    expected = cost_micro(model_price, TokenCounts(input=61, output=9))
    assert event.cost_micro == expected and expected > 0
    reply_event = UsageEvent.objects.get(message_id=reply.pk)
    assert reply_event.purpose == UsageEvent.Purpose.CHAT

    # The usage pages say which row is the title.
    day = timezone.localdate().isoformat()
    html = alice_client.get(reverse("usage:day", args=[day])).content.decode()
    assert html.count('<span class="badge" title="The conversation') == 1
    response = alice_client.get(reverse("usage:export"))
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    by_message = {row["message"]: row for row in rows}
    assert by_message[str(call.pk)]["purpose"] == "title"
    assert by_message[str(call.pk)]["output tokens"] == "9"
    assert by_message[str(reply.pk)]["purpose"] == "chat"
    # The account export's usage.csv too.
    export = exports.account_export_request(user=alice, request=RequestFactory().post("/"))
    wait_until(  # the worker builds it
        lambda: AccountExport.objects.get(pk=export.pk).status == "ready", "no export built"
    )
    archive = alice_client.get(reverse("privacy:export_download", args=[export.pk])).content
    with zipfile.ZipFile(io.BytesIO(archive)) as files:
        exported = list(csv.DictReader(io.StringIO(files.read("usage.csv").decode())))
    assert {row["message"]: row["purpose"] for row in exported} == {
        str(call.pk): "title",
        str(reply.pk): "chat",
    }

    # Nothing of the title call's text is stored: the title call's row holds none.
    assert {f.name for f in TitleCall._meta.concrete_fields} == {
        "id",
        "conversation",
        "owner",
        "reply",
        "status",
        "created_at",
        "started_at",
        "finished_at",
    }
    # A second reply never asks for another title.
    fake_provider.script(text="Second answer.", path=CHAT)
    _, second = send(Conversation.objects.get(pk=conversation.pk), "And of Spain?")
    wait_final(second)
    tasks.generate_reply(str(second.pk))  # a redelivery too
    assert len(posts(fake_provider)) == 3
    assert TitleCall.objects.count() == 1


def test_a_temporary_chat_gets_a_model_title_too(alice, fake_provider, celery_worker):
    opt_in(alice)
    fake_provider.script(text=ANSWER, path=CHAT)
    fake_provider.script(text="Paris in brief", path=CHAT)
    conversation, _ = start_chat(alice, fake_provider)
    services.conversation_set_flags(conversation=conversation, temporary=True)
    _, reply = send(conversation, QUESTION)
    wait_final(reply)
    assert title_call_ended(conversation).status == TitleCall.Status.DONE
    assert title_of(conversation) == "Paris in brief"


def test_the_task_is_given_the_title_calls_id_only(alice, fake_provider, celery_worker):
    published = []

    def record(sender=None, body=None, headers=None, **kwargs):
        if sender == "chat.tasks.write_title":
            published.append((body, json.dumps([body, headers], default=repr)))

    before_task_publish.connect(record)
    try:
        opt_in(alice)
        conversation, _, _ = first_turn(alice, fake_provider, title_script={"text": "Paris"})
        call = title_call_ended(conversation)
    finally:
        before_task_publish.disconnect(record)
    ((body, everything),) = published
    args, kwargs, _ = body
    assert list(args) == [str(call.pk)] and kwargs == {}
    uuid.UUID(args[0])
    for text in ("capital", "France", "Paris"):
        assert text not in everything


def test_a_rename_before_the_title_lands_is_kept(alice, fake_provider, celery_worker):
    opt_in(alice)
    conversation, _, _ = first_turn(
        alice, fake_provider, title_script={"text": "Model title", "response_delay": 1.5}
    )
    wait_until(lambda: len(posts(fake_provider)) == 2, "the title call was not made")
    services.conversation_rename(
        conversation=Conversation.objects.get(pk=conversation.pk), title="Mine"
    )
    call = title_call_ended(conversation)
    assert call.status == TitleCall.Status.DONE  # the call ran (and is billed) ...
    assert UsageEvent.objects.filter(message_id=call.pk, purpose="title").exists()
    assert title_of(conversation) == "Mine"  # ... but the user's title stays
    assert conversation.title_source == TitleSource.USER


def test_a_rename_before_the_first_reply_ends_means_no_title_call(alice, fake_provider):
    opt_in(alice)
    fake_provider.script(text=ANSWER, path=CHAT)
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation, QUESTION)
    services.conversation_rename(conversation=conversation, title="Named already")
    tasks.generate_reply(str(reply.pk))
    assert not TitleCall.objects.exists()
    assert len(posts(fake_provider)) == 1
    assert title_of(conversation) == "Named already"


def test_a_cap_that_is_used_up_skips_the_title_quietly(
    alice, fake_provider, celery_worker, settings
):
    price("custom", "gpt-test", input=10.0, output=10.0)
    settings.BYOK_MAX_OUTPUT_TOKENS = 300
    spend_cap_set(owner=alice, key_id=None, limit_micro=10_000)  # $0.01
    opt_in(alice)
    # The first reply fits the cap's reservation, and costs all of it ($0.02).
    fake_provider.script(
        text=ANSWER, path=CHAT, usage={"input_tokens": 1000, "output_tokens": 1000}
    )
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation, QUESTION)
    reply = wait_final(reply)
    assert reply.status == Message.Status.DONE
    call = title_call_ended(conversation)
    assert call.status == TitleCall.Status.SKIPPED
    assert len(posts(fake_provider)) == 1
    assert not UsageEvent.objects.filter(purpose="title").exists()
    assert title_of(conversation) == services._title_from(QUESTION)
    reply.refresh_from_db()  # nothing is said of the title: the reply is as it ended
    assert reply.status == Message.Status.DONE and not reply.error_kind and not reply.notice


def test_a_provider_error_leaves_the_first_messages_title(alice, fake_provider, celery_worker):
    opt_in(alice)
    conversation, key, reply = first_turn(
        alice, fake_provider, title_script={"status": 400, "error_message": "bad model"}
    )
    call = title_call_ended(conversation)
    assert call.status == TitleCall.Status.FAILED
    assert len(posts(fake_provider)) == 2
    assert title_of(conversation) == services._title_from(QUESTION)
    assert conversation.title_source == TitleSource.MESSAGE
    event = UsageEvent.objects.get(message_id=call.pk)
    assert event.purpose == "title" and event.status == "error"
    # Nothing is shown: the reply stands as it was, the key is as it was.
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE and not reply.error_kind
    key.refresh_from_db()
    assert key.is_usable


def test_another_users_title_setting_does_not_apply(alice, bob, fake_provider, celery_worker):
    opt_in(bob)  # bob's choice says nothing about alice's conversations
    fake_provider.script(text=ANSWER, path=CHAT)
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation, QUESTION)
    wait_final(reply)
    assert titles.title_call_queue(reply_id=reply.pk) is None
    assert not TitleCall.objects.exists()


# --- the setting ------------------------------------------------------------------------------


def test_the_settings_page_turns_model_titles_on_and_off_for_that_user_only(
    alice_client, alice, bob
):
    opt_in(bob)
    page = alice_client.get(reverse("accounts:settings")).content.decode()
    assert "Let the model write chat titles" in page
    box = 'type="checkbox" name="model_titles" aria-describedby="id_model_titles_helptext"'
    assert f'{box} id="id_model_titles">' in page  # off
    assert 'id="id_model_titles_helptext"' in page  # the help the box points to
    url = reverse("accounts:chat_preferences")
    response = alice_client.post(url, {"model_titles": "on"})
    assert response.status_code == 302 and response["Location"] == reverse("accounts:settings")
    alice.refresh_from_db()
    bob.refresh_from_db()
    assert alice.model_titles is True and bob.model_titles is True
    page = alice_client.get(reverse("accounts:settings")).content.decode()
    assert f'{box} id="id_model_titles" checked>' in page
    alice_client.post(url, {})  # an unticked checkbox sends nothing: off
    alice.refresh_from_db()
    bob.refresh_from_db()
    assert alice.model_titles is False and bob.model_titles is True


def test_the_setting_is_off_by_default_and_its_view_takes_only_a_post(client, alice, alice_client):
    assert alice.model_titles is False
    url = reverse("accounts:chat_preferences")
    assert alice_client.get(url).status_code == 405
    client.logout()
    response = client.post(url, {"model_titles": "on"})
    assert response.status_code == 302 and reverse("accounts:login") in response["Location"]
    alice.refresh_from_db()
    assert alice.model_titles is False


# --- the reaper ------------------------------------------------------------------------------


def _first_reply_run_here(owner, fake):
    """A first reply done by `turns.run_turn` here (no worker, no title call queued)."""
    from chat import turns

    fake.script(text=ANSWER, path=CHAT)
    conversation, _ = start_chat(owner, fake)
    _, reply = send(conversation, QUESTION)
    turns.run_turn(str(reply.pk))
    return conversation, Message.objects.get(pk=reply.pk)


def test_the_reaper_skips_a_title_call_no_worker_claimed(alice, fake_provider, settings):
    from usage import ratelimits

    opt_in(alice)
    conversation, reply = _first_reply_run_here(alice, fake_provider)
    long_ago = timezone.now() - timedelta(seconds=settings.BYOK_QUEUED_TURN_TIMEOUT + 1)
    call = TitleCall.objects.create(
        conversation=conversation, owner=alice, reply=reply, created_at=long_ago
    )
    ratelimits.turn_admit(user=alice, message_id=call.pk)  # what its admission took
    assert ratelimits.running_turns(user_id=alice.pk) == 1
    assert titles.title_calls_reap() == 1
    call.refresh_from_db()
    assert call.status == TitleCall.Status.SKIPPED
    assert ratelimits.running_turns(user_id=alice.pk) == 0
    assert not UsageEvent.objects.filter(purpose="title").exists()
    assert title_of(conversation) == services._title_from(QUESTION)
    tasks.write_title(str(call.pk))  # a late delivery does nothing
    assert len(posts(fake_provider)) == 1


def test_the_reaper_ends_a_title_call_whose_worker_was_lost(alice, fake_provider, settings):
    opt_in(alice)
    conversation, reply = _first_reply_run_here(alice, fake_provider)
    hung = timezone.now() - timedelta(
        seconds=settings.BYOK_TURN_HARD_LIMIT + settings.BYOK_TURN_STORE_RETRY_SECONDS + 60
    )
    call = TitleCall.objects.create(
        conversation=conversation,
        owner=alice,
        reply=reply,
        status=TitleCall.Status.RUNNING,
        started_at=hung,
    )
    recent = TitleCall.objects.create(
        conversation=start_chat(alice, fake_provider, label="Other")[0],
        owner=alice,
        reply=reply,
        status=TitleCall.Status.RUNNING,
        started_at=timezone.now(),
    )
    assert titles.title_calls_reap() == 1
    call.refresh_from_db()
    recent.refresh_from_db()
    assert call.status == TitleCall.Status.FAILED
    assert recent.status == TitleCall.Status.RUNNING  # its worker may still be at it
    event = UsageEvent.objects.get(message_id=call.pk)
    assert event.purpose == "title" and event.error_kind == "worker_lost"
    assert title_of(conversation) == services._title_from(QUESTION)


@pytest.mark.parametrize(
    ("preset", "model", "limit"),
    [
        ("anthropic", "claude-test", lambda body: body["max_tokens"]),
        ("gemini", "gemini-test", lambda body: body["generationConfig"]["maxOutputTokens"]),
    ],
)
def test_each_protocol_writes_a_title_with_a_small_limit(
    alice, fake_provider, celery_worker, preset, model, limit
):
    opt_in(alice)
    path = CHAT_PATHS[preset]
    fake_provider.script(text=ANSWER, path=path)
    fake_provider.script(text="Paris, *briefly*", path=path)
    conversation, _ = vendor_chat(alice, fake_provider, preset, model)
    _, reply = send(conversation, QUESTION)
    wait_final(reply)
    call = title_call_ended(conversation)
    assert call.status == TitleCall.Status.DONE
    assert title_of(conversation) == "Paris, briefly"
    title = posts(fake_provider)[-1]
    assert limit(title.body) == 20 and model in (title.path + json.dumps(title.body))
    assert UsageEvent.objects.get(message_id=call.pk).purpose == "title"
