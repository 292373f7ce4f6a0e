"""Continue: a reply that was stopped or cut off at the length limit is written on by the
model, as a provider call of its own (a child reply), and the page shows one reply."""

from __future__ import annotations

import pytest
from django.urls import reverse

from chat import services, turns
from chat.models import Conversation, Message
from chat.selectors import conversation_branch, message_view
from chat.services import IN_FLIGHT, ChatError
from providers.catalog import PRESETS, model_takes_prefill
from providers.continuation import CONTINUE_INSTRUCTION
from tests.chat_helpers import (
    CHAT_PATHS,
    read_stream,
    send,
    start_chat,
    vendor_chat,
    wait_final,
)
from tests.opened import error_of
from tests.usage_helpers import price
from usage.models import UsageEvent
from vault.services import OwnerCipher

pytestmark = pytest.mark.django_db

# How each protocol says "the reply reached the output limit".
LENGTH = {"custom": "length", "anthropic": "max_tokens", "gemini": "MAX_TOKENS"}
PARTIAL = "The quick brown fox jumps"
REST = " over the lazy dog."


def chat_bodies(fake, preset):
    return [r.body for r in fake.requests if r.method == "POST" and CHAT_PATHS[preset] in r.path]


def conversation_for(alice, fake, preset, model):
    if preset == "custom":
        conversation, _ = start_chat(alice, fake, model=model)
    else:
        conversation, _ = vendor_chat(alice, fake, preset, model)
    return conversation


def cut_off_reply(fake, conversation, preset="custom", text=PARTIAL, question="Tell me a line"):
    """A sent message whose reply ran to the length limit."""
    fake.script(text=text, finish_reason=LENGTH[preset], path=CHAT_PATHS[preset])
    _, reply = send(conversation, question)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE, error_of(reply)
    assert reply.finish_reason == "length"
    return reply


def continued(fake, reply, preset="custom", text=REST, **script):
    more = services.turn_continue(message=reply)
    fake.script(text=text, path=CHAT_PATHS[preset], **script)
    turns.run_turn(str(more.pk))
    more.refresh_from_db()
    return more


def shown(conversation):
    conversation.refresh_from_db()
    return [(view.message.role, view.text) for view in conversation_branch(conversation)]


def sent_messages(body, preset):
    """(role, text) of what a request was sent, whatever its protocol."""
    if preset == "gemini":
        return [(c["role"], c["parts"][0]["text"]) for c in body["contents"]]
    return [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"]


# --- what each protocol is sent -------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "model", "expected"),
    [
        # OpenAI-compatible: the partial reply, then a user message asking to continue.
        (
            "custom",
            "gpt-test",
            [
                ("user", "Tell me a line"),
                ("assistant", PARTIAL),
                ("user", CONTINUE_INSTRUCTION),
            ],
        ),
        # Anthropic (a model that takes a prefill): the partial reply is the last message,
        # which the model carries on word for word.
        ("anthropic", "claude-3-5-sonnet", [("user", "Tell me a line"), ("assistant", PARTIAL)]),
        # Claude 4.6 and later refuse a prefill: asked like the others.
        (
            "anthropic",
            "claude-sonnet-4-6",
            [
                ("user", "Tell me a line"),
                ("assistant", PARTIAL),
                ("user", CONTINUE_INSTRUCTION),
            ],
        ),
        # Gemini: the model's own turn, then the user's request to continue.
        (
            "gemini",
            "gemini-test",
            [("user", "Tell me a line"), ("model", PARTIAL), ("user", CONTINUE_INSTRUCTION)],
        ),
    ],
)
def test_continuing_sends_each_protocol_the_partial_reply_the_way_it_takes_it(
    alice, fake_provider, preset, model, expected
):
    conversation = conversation_for(alice, fake_provider, preset, model)
    reply = cut_off_reply(fake_provider, conversation, preset)
    assert reply.notice == "The reply reached the length limit and was cut short."
    more = continued(fake_provider, reply, preset)
    assert more.status == Message.Status.DONE, error_of(more)
    bodies = chat_bodies(fake_provider, preset)
    assert len(bodies) == 2  # one provider call each
    assert sent_messages(bodies[-1], preset) == expected
    # A continuation is a reply under the reply it continues, and the branch's end.
    assert more.parent_id == reply.pk and more.role == Message.Role.ASSISTANT
    conversation.refresh_from_db()
    assert conversation.active_leaf_id == more.pk
    # The reader sees one reply.
    assert shown(conversation) == [("user", "Tell me a line"), ("assistant", PARTIAL + REST)]
    # Two provider calls, two usage events.
    assert set(UsageEvent.objects.values_list("message_id", flat=True)) == {reply.pk, more.pk}


def test_a_thinking_claude_is_asked_not_prefilled(alice, fake_provider):
    """Claude 3.7 to 4.5 refuse a prefill while they think (a reasoning effort is set)."""
    conversation, _ = vendor_chat(alice, fake_provider, "anthropic", "claude-sonnet-4-5")
    Conversation.objects.filter(pk=conversation.pk).update(reasoning_effort="low")
    conversation.refresh_from_db()
    reply = cut_off_reply(fake_provider, conversation, "anthropic")
    continued(fake_provider, reply, "anthropic")
    body = chat_bodies(fake_provider, "anthropic")[-1]
    assert body["thinking"]["type"] == "enabled"
    assert sent_messages(body, "anthropic")[-2:] == [
        ("assistant", PARTIAL),
        ("user", CONTINUE_INSTRUCTION),
    ]


def test_a_reply_stopped_while_it_streamed_continues(
    alice, fake_provider, celery_worker, asgi_server
):
    conversation, _ = start_chat(alice, fake_provider)
    fake_provider.script(
        text=" ".join(["slow"] * 300), tokens_per_second=20, path=CHAT_PATHS["custom"]
    )
    _, reply = send(conversation, "Go slowly")
    read_stream(asgi_server, alice, reply, stop_after=3)
    services.turn_cancel(message=reply)
    reply = wait_final(reply, timeout=30)
    assert reply.status == Message.Status.STOPPED and reply.tokens_estimated
    kept = message_view(reply, OwnerCipher(alice)).text
    fake_provider.script(text="done now.", path=CHAT_PATHS["custom"])
    more = wait_final(services.turn_continue(message=reply))
    assert more.status == Message.Status.DONE, error_of(more)
    body = chat_bodies(fake_provider, "custom")[-1]
    assert sent_messages(body, "custom")[-2:] == [
        ("assistant", kept.rstrip()),
        ("user", CONTINUE_INSTRUCTION),
    ]
    view = conversation_branch(Conversation.objects.get(pk=conversation.pk))[-1]
    assert view.text == kept + "done now."
    # The estimate of the stopped part is part of the reply's tokens: marked as one.
    assert view.facts["usage"].startswith("≈ ")
    events = UsageEvent.objects.filter(message_id__in=[reply.pk, more.pk])
    assert sorted(e.tokens_estimated for e in events) == [False, True]


def test_trailing_whitespace_is_not_sent_and_the_parts_join_as_the_model_saw_them(
    alice, fake_provider
):
    conversation, _ = vendor_chat(alice, fake_provider, "anthropic", "claude-3-5-sonnet")
    reply = cut_off_reply(fake_provider, conversation, "anthropic", text="A list:\n\n")
    continued(fake_provider, reply, "anthropic", text="\n\n- one\n- two")
    body = chat_bodies(fake_provider, "anthropic")[-1]
    assert body["messages"][-1] == {"role": "assistant", "content": "A list:"}
    assert shown(conversation)[-1] == ("assistant", "A list:\n\n- one\n- two")


def test_a_reply_stopped_after_a_paragraph_break_keeps_it(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    reply = cut_off_reply(fake_provider, conversation, text="First paragraph.\n\n")
    continued(fake_provider, reply, text="Second paragraph.")
    body = chat_bodies(fake_provider, "custom")[-1]
    assert sent_messages(body, "custom")[1] == ("assistant", "First paragraph.")
    assert shown(conversation)[-1] == ("assistant", "First paragraph.\n\nSecond paragraph.")


def test_how_parts_join():
    from chat.branches import joined_text

    assert joined_text(["Hello wor", "ld"]) == "Hello world"
    assert joined_text(["Hello ", "world"]) == "Hello world"
    assert joined_text(["Hello ", " world"]) == "Hello world"  # as the model was shown it
    assert joined_text(["A:\n\n", "\n\n- b"]) == "A:\n\n- b"
    assert joined_text(["one", "", " two"]) == "one two"


def test_which_models_take_a_prefill():
    anthropic, openai, gemini = PRESETS["anthropic"], PRESETS["openai"], PRESETS["gemini"]
    assert model_takes_prefill(anthropic, "claude-sonnet-4-5", None)
    assert model_takes_prefill(anthropic, "claude-3-5-haiku", "high")  # no thinking there
    # Thinking refuses a prefill, and so do Claude 4.6 and later.
    assert not model_takes_prefill(anthropic, "claude-sonnet-4-5", "low")
    assert not model_takes_prefill(anthropic, "claude-opus-4-7", None)
    assert not model_takes_prefill(openai, "gpt-4.1", None)
    assert not model_takes_prefill(gemini, "gemini-2.5-flash", None)


def test_a_reply_continued_twice_is_sent_and_shown_as_one(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    reply = cut_off_reply(fake_provider, conversation, text="One,")
    second = continued(fake_provider, reply, text=" two,", finish_reason="length")
    assert second.status == Message.Status.DONE and second.finish_reason == "length"
    third = continued(fake_provider, second, text=" three.")
    assert third.parent_id == second.pk
    body = chat_bodies(fake_provider, "custom")[-1]
    assert sent_messages(body, "custom") == [
        ("user", "Tell me a line"),
        ("assistant", "One, two,"),
        ("user", CONTINUE_INSTRUCTION),
    ]
    assert shown(conversation) == [("user", "Tell me a line"), ("assistant", "One, two, three.")]
    assert UsageEvent.objects.count() == 3
    # A message sent after it answers the whole reply, sent as one message.
    fake_provider.script(text="ok", path="/chat/completions")
    _, next_reply = send(conversation, "And then?")
    turns.run_turn(str(next_reply.pk))
    body = chat_bodies(fake_provider, "custom")[-1]
    assert sent_messages(body, "custom") == [
        ("user", "Tell me a line"),
        ("assistant", "One, two, three."),
        ("user", "And then?"),
    ]


def test_a_stopped_reply_can_be_continued(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    reply = cut_off_reply(fake_provider, conversation)
    # As a stop leaves it (the browser test stops a real stream).
    Message.objects.filter(pk=reply.pk).update(status=Message.Status.STOPPED, finish_reason="")
    reply.refresh_from_db()
    more = continued(fake_provider, reply)
    assert more.status == Message.Status.DONE
    assert shown(conversation)[-1] == ("assistant", PARTIAL + REST)


# --- the page -------------------------------------------------------------------------------


def test_the_page_shows_one_reply_with_the_tokens_and_cost_of_both_calls(
    alice, alice_client, fake_provider
):
    price("custom", "gpt-test", input=1.0, output=2.0, cache_read=None)
    conversation, _ = start_chat(alice, fake_provider)
    fake_provider.script(
        text=PARTIAL, finish_reason="length", usage={"input_tokens": 1000, "output_tokens": 500}
    )
    _, reply = send(conversation, "Tell me a line")
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    page = alice_client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert 'data-action="continue"' in page
    assert reverse("chat:continue", args=[reply.pk]) in page

    more = continued(
        fake_provider, reply, usage={"input_tokens": 1200, "output_tokens": 300}
    )  # fmt: skip
    page = alice_client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert page.count('class="message assistant') == 1
    assert f'id="message-{more.pk}"' in page and f'id="message-{reply.pk}"' not in page
    assert f"<p>{PARTIAL}{REST}</p>" in page
    assert 'data-action="continue"' not in page  # it ended normally this time
    # 2,200 in at $1/M and 800 out at $2/M: $0.0038, both calls.
    assert "2200 in · 800 out · $0.0038" in page
    costs = {e.message_id: e.cost_micro for e in UsageEvent.objects.all()}
    assert costs == {reply.pk: 2000, more.pk: 1800}


def test_regenerating_a_continued_reply_answers_the_question_again(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    reply = cut_off_reply(fake_provider, conversation)
    more = continued(fake_provider, reply)
    again = services.turn_regenerate(message=more)
    assert again.parent_id == reply.parent_id  # a new version of the whole reply
    fake_provider.script(text="Another line.", path="/chat/completions")
    turns.run_turn(str(again.pk))
    assert shown(conversation) == [("user", "Tell me a line"), ("assistant", "Another line.")]
    views = conversation_branch(conversation)
    assert (views[-1].version, views[-1].versions) == (2, 2)
    services.branch_switch(conversation=conversation, message=again, version=1)
    conversation.refresh_from_db()
    views = conversation_branch(conversation)
    assert views[-1].text == PARTIAL + REST
    assert views[-1].head.pk == reply.pk and (views[-1].version, views[-1].versions) == (1, 2)


def test_continue_from_htmx_returns_the_branch_with_the_reply_growing(
    alice, alice_client, fake_provider
):
    conversation, _ = start_chat(alice, fake_provider)
    reply = cut_off_reply(fake_provider, conversation)
    response = alice_client.post(reverse("chat:continue", args=[reply.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    more = Message.objects.get(parent=reply)
    html = response.content.decode()
    assert html.count('class="message assistant') == 1
    assert reverse("chat:stream", args=[more.pk]) in html
    # The text so far stays on show until the stream's first rendering replaces it.
    assert 'data-keep-body="1"' in html and f"<p>{PARTIAL}</p>" in html
    assert more.status == Message.Status.QUEUED


def test_continue_without_js_redirects_to_the_conversation(alice, alice_client, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    reply = cut_off_reply(fake_provider, conversation)
    response = alice_client.post(reverse("chat:continue", args=[reply.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("chat:conversation", args=[conversation.pk])
    more = Message.objects.get(parent=reply)
    page = alice_client.get(response["Location"]).content.decode()
    assert reverse("chat:stream", args=[more.pk]) in page


def test_the_stream_of_a_continuation_renders_the_whole_reply(
    alice, fake_provider, celery_worker, asgi_server
):
    conversation, _ = start_chat(alice, fake_provider)
    fake_provider.script(
        text="# Title\n\nFirst part.\n\n", finish_reason="length", path="/chat/completions"
    )
    _, reply = send(conversation, "Tell me a line")
    wait_final(reply)
    fake_provider.script(text="Second part.", tokens_per_second=200, path="/chat/completions")
    more = services.turn_continue(message=reply)
    events = read_stream(asgi_server, alice, more)
    deltas = [e for e in events if e.event == "delta"]
    assert "".join(e.data["text"] for e in deltas) == "Second part."
    first = next(e for e in deltas if "commit" in e.data)
    assert first.data["reset"] == "1"
    assert "<h1>Title</h1>" in first.data["commit"] + first.data["tail"]
    # What the page builds from the deltas (chat.js): the whole reply, one paragraph each.
    committed: list[str] = []
    tail = ""
    for event in deltas:
        if "tail" in event.data:
            if event.data.get("reset"):
                committed = []
            committed.append(event.data.get("commit", ""))
            tail = event.data["tail"]
    live = "".join(committed) + tail
    assert "<h1>Title</h1>" in live and "<p>First part.</p>" in live
    done = events[-1]
    assert done.event == "done", done
    assert "<p>First part.</p>\n<p>Second part.</p>" in done.data["html"]
    assert "<h1>Title</h1>" in done.data["html"]
    assert done.data["continuable"] == ""
    # A reload after the stream expired shows the same.
    from chat.streams import stream_key
    from core.redis import get_redis

    get_redis().delete(stream_key(more.pk))
    again = read_stream(asgi_server, alice, wait_final(more))
    assert again[-1].data["html"] == done.data["html"]
    assert again[-1].data["usage"] == done.data["usage"]


# --- what cannot be continued ----------------------------------------------------------------


def _nothing_changed(conversation, before):
    conversation.refresh_from_db()
    assert Message.objects.filter(conversation=conversation).count() == before[0]
    assert conversation.active_leaf_id == before[1]


def test_another_users_reply_is_a_404(alice, bob, client, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    reply = cut_off_reply(fake_provider, conversation)
    client.force_login(bob)
    before = (conversation.messages.count(), reply.pk)
    assert client.post(reverse("chat:continue", args=[reply.pk])).status_code == 404
    assert client.post(
        reverse("chat:continue", args=[reply.pk]), HTTP_HX_REQUEST="true"
    ).status_code == 404  # fmt: skip
    _nothing_changed(conversation, before)


def test_continue_is_post_only(alice_client, alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    reply = cut_off_reply(fake_provider, conversation)
    assert alice_client.get(reverse("chat:continue", args=[reply.pk])).status_code == 405


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("done", "This reply is complete."),
        ("failed", "This reply failed, so it cannot be continued"),
        ("in_flight", IN_FLIGHT),
        ("empty", "This reply has no text to continue"),
        ("not_last", "Only the last reply of the conversation can be continued."),
        ("user", "Only a reply can be continued."),
    ],
)
def test_what_cannot_be_continued_says_why_and_changes_nothing(
    alice, alice_client, fake_provider, case, error
):
    conversation, _ = start_chat(alice, fake_provider)
    if case == "done":
        fake_provider.script(text="A whole answer.")
        _, target = send(conversation)
        turns.run_turn(str(target.pk))
    elif case == "failed":
        fake_provider.script(error="bad_request", path="/chat/completions")
        _, target = send(conversation)
        turns.run_turn(str(target.pk))
    elif case == "in_flight":
        stopped = cut_off_reply(fake_provider, conversation)
        # A reply queued (no worker takes it here): in flight.
        target = services.turn_regenerate(message=stopped)
    elif case == "empty":
        _, target = send(conversation)
        services.turn_cancel(message=target)  # stopped before a word
    elif case == "not_last":
        target = cut_off_reply(fake_provider, conversation)
        fake_provider.script(text="ok")
        _, later = send(conversation, "Next question")
        turns.run_turn(str(later.pk))
    else:
        target = cut_off_reply(fake_provider, conversation)
        target = target.parent
    target.refresh_from_db()
    conversation.refresh_from_db()
    before = (conversation.messages.count(), conversation.active_leaf_id)
    with pytest.raises(ChatError, match=error.split(",")[0].rstrip(".")):
        services.turn_continue(message=target)
    _nothing_changed(conversation, before)
    if case == "user":
        return  # not a reply: the view's 404 (`_reply_for`)
    response = alice_client.post(
        reverse("chat:continue", args=[target.pk]), HTTP_HX_REQUEST="true"
    )  # fmt: skip
    assert response.status_code == 422
    assert error.split(",")[0] in response.content.decode()
    response = alice_client.post(reverse("chat:continue", args=[target.pk]), follow=True)
    assert error.split(",")[0] in response.content.decode()
    _nothing_changed(conversation, before)


def test_a_user_message_url_is_a_404(alice, alice_client, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    question = cut_off_reply(fake_provider, conversation).parent
    assert alice_client.post(reverse("chat:continue", args=[question.pk])).status_code == 404


def test_continue_is_admitted_like_a_send(alice, fake_provider, settings):
    """The per-user limits hold: a continuation counts against the minute like a send."""
    conversation, _ = start_chat(alice, fake_provider)
    reply = cut_off_reply(fake_provider, conversation)
    settings.BYOK_RATE_TURNS_PER_MINUTE = 1  # the send above used it up
    before = (conversation.messages.count(), reply.pk)
    with pytest.raises(ChatError, match="in the last minute"):
        services.turn_continue(message=reply)
    _nothing_changed(conversation, before)


def test_each_part_is_stored_as_its_own_message(alice, fake_provider):
    """The export (every message, with its parent) keeps the parts apart: the tree says
    which reply each continues."""
    conversation, _ = start_chat(alice, fake_provider)
    reply = cut_off_reply(fake_provider, conversation)
    more = continued(fake_provider, reply)
    cipher = OwnerCipher(alice)
    assert message_view(Message.objects.get(pk=reply.pk), cipher).text == PARTIAL
    assert message_view(Message.objects.get(pk=more.pk), cipher).text == REST
    assert Conversation.objects.get(pk=conversation.pk).messages.count() == 3
