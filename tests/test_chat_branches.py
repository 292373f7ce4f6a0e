"""Edit, regenerate and versions: messages form a tree, the page and the provider see the
active branch only, the export and usage see every branch."""

from __future__ import annotations

import importlib
import json

import pytest
from django.urls import reverse

from chat import services, turns
from chat.branches import Tree
from chat.models import Conversation, Message
from chat.selectors import conversation_branch, message_view
from chat.services import ChatError
from tests.chat_helpers import send, start_chat
from tests.opened import error_of
from vault.services import OwnerCipher

pytestmark = pytest.mark.django_db

CHAT = "/chat/completions"


def text_of(message: Message) -> str:
    return message_view(message, OwnerCipher(message.owner)).text


def answered(fake, conversation, text, reply_text="ok"):
    """Send `text` and run its turn; the user message and the finished reply."""
    fake.script(text=reply_text, path=CHAT)
    question, reply = send(conversation, text)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE, error_of(reply)
    return question, reply


def run(fake, reply, reply_text="ok"):
    fake.script(text=reply_text, path=CHAT)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE, error_of(reply)
    return reply


def sent_to_provider(fake) -> list[tuple[str, str]]:
    body = [r for r in fake.requests if r.method == "POST"][-1].body
    return [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"]


def shown(conversation) -> list[tuple[str, str, int, int]]:
    conversation.refresh_from_db()
    return [
        (view.message.role, view.text, view.version, view.versions)
        for view in conversation_branch(conversation)
    ]


# --- the tree -------------------------------------------------------------------------------


def test_sending_appends_to_the_active_leaf(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    first, first_reply = answered(fake_provider, conversation, "one")
    second, second_reply = answered(fake_provider, conversation, "two")
    assert first.parent_id is None
    assert first_reply.parent_id == first.pk
    assert second.parent_id == first_reply.pk
    assert second_reply.parent_id == second.pk
    conversation.refresh_from_db()
    assert conversation.active_leaf_id == second_reply.pk


def test_regenerate_keeps_the_previous_reply_as_a_version(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    question, old = answered(fake_provider, conversation, "hello", "first answer")
    new = services.turn_regenerate(message=old)
    assert new.pk != old.pk and new.parent_id == question.pk
    assert new.status == Message.Status.QUEUED
    run(fake_provider, new, "second answer")
    assert Message.objects.filter(pk=old.pk).exists()
    assert text_of(Message.objects.get(pk=old.pk)) == "first answer"
    assert shown(conversation) == [
        ("user", "hello", 1, 1),
        ("assistant", "second answer", 2, 2),
    ]
    # The regenerated turn was asked the same question, not shown the old answer.
    assert sent_to_provider(fake_provider) == [("user", "hello")]


def test_any_reply_of_the_active_branch_can_be_regenerated(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    _, first_reply = answered(fake_provider, conversation, "one", "answer one")
    answered(fake_provider, conversation, "two", "answer two")
    again = services.turn_regenerate(message=first_reply)
    run(fake_provider, again, "answer one, again")
    assert sent_to_provider(fake_provider) == [("user", "one")]
    # The new reply is the leaf: the later turn is on the other version's branch.
    assert shown(conversation) == [
        ("user", "one", 1, 1),
        ("assistant", "answer one, again", 2, 2),
    ]
    services.branch_switch(conversation=conversation, message=again, version=1)
    assert [text for _, text, _, _ in shown(conversation)] == [
        "one",
        "answer one",
        "two",
        "answer two",
    ]


def test_an_edit_starts_a_branch_whose_context_leaves_the_old_branch_out(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    answered(fake_provider, conversation, "What is 2+2?", "4")
    old_question, _ = answered(fake_provider, conversation, "Name a red fruit", "A strawberry")
    answered(fake_provider, conversation, "And a yellow one?", "A banana")

    edited, reply = services.message_edit(
        conversation=conversation, message=old_question, text="Name a green fruit"
    )
    assert edited.parent_id == old_question.parent_id and edited.role == "user"
    assert reply.parent_id == edited.pk and reply.status == Message.Status.QUEUED
    assert b"green" not in bytes(edited.sealed_content)  # sealed like every message
    run(fake_provider, reply, "A lime")
    assert sent_to_provider(fake_provider) == [
        ("user", "What is 2+2?"),
        ("assistant", "4"),
        ("user", "Name a green fruit"),
    ]
    assert shown(conversation) == [
        ("user", "What is 2+2?", 1, 1),
        ("assistant", "4", 1, 1),
        ("user", "Name a green fruit", 2, 2),
        ("assistant", "A lime", 1, 1),
    ]
    # The old branch is kept whole, one version back.
    assert Message.objects.filter(conversation=conversation).count() == 8
    # The next message follows the edited branch only.
    answered(fake_provider, conversation, "Is it sour?", "Yes")
    sent = sent_to_provider(fake_provider)
    assert sent[-1] == ("user", "Is it sour?")
    assert not any("red" in text or "yellow" in text or "banana" in text for _, text in sent)


def test_switching_versions_shows_the_newest_leaf_of_the_chosen_version(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    question, _ = answered(fake_provider, conversation, "v1")
    answered(fake_provider, conversation, "v1 follow-up", "deep in v1")
    edited, reply = services.message_edit(conversation=conversation, message=question, text="v2")
    run(fake_provider, reply, "v2 answer")

    leaf = services.branch_switch(conversation=conversation, message=edited, version=1)
    assert text_of(leaf) == "deep in v1"
    assert [(text, version, versions) for _, text, version, versions in shown(conversation)] == [
        ("v1", 1, 2),
        ("ok", 1, 1),
        ("v1 follow-up", 1, 1),
        ("deep in v1", 1, 1),
    ]
    # It survives a reload: the conversation remembers its leaf.
    assert Conversation.objects.get(pk=conversation.pk).active_leaf_id == leaf.pk
    # Within v1, a regenerated reply is newer: coming back to v1 follows it down.
    again = run(fake_provider, services.turn_regenerate(message=leaf), "deep in v1, again")
    services.branch_switch(conversation=conversation, message=question, version=2)
    assert [text for _, text, _, _ in shown(conversation)] == ["v2", "v2 answer"]
    assert Conversation.objects.get(pk=conversation.pk).active_leaf_id == reply.pk
    assert services.branch_switch(conversation=conversation, message=edited, version=1) == again
    assert shown(conversation)[-1] == ("assistant", "deep in v1, again", 2, 2)


def test_a_new_message_on_a_switched_branch_goes_to_that_branch(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    _, first_reply = answered(fake_provider, conversation, "hi", "first")
    second = run(fake_provider, services.turn_regenerate(message=first_reply), "second")
    services.branch_switch(conversation=conversation, message=second, version=1)
    follow_up, _ = answered(fake_provider, conversation, "more")
    assert follow_up.parent_id == first_reply.pk
    assert sent_to_provider(fake_provider) == [
        ("user", "hi"),
        ("assistant", "first"),
        ("user", "more"),
    ]


def test_the_tree_helpers_follow_the_newest_child():
    import uuid

    a, b, c, d = (uuid.uuid4() for _ in range(4))
    tree = Tree()
    for message_id, parent_id in ((a, None), (b, a), (c, a), (d, b)):
        tree.parent[message_id] = parent_id
        tree.children[parent_id].append(message_id)
        tree.newest = message_id
    assert tree.path_to(d) == [a, b, d]
    assert tree.siblings(c) == [b, c]
    assert tree.newest_leaf(a) == c
    assert tree.newest_leaf(b) == d


# --- bad input ------------------------------------------------------------------------------


def everything(conversation) -> list[tuple]:
    conversation.refresh_from_db()
    rows = Message.objects.filter(conversation=conversation).order_by("created_at", "id")
    return [conversation.active_leaf_id, *rows.values_list("id", "parent_id", "status")]


def test_editing_an_assistant_message_is_refused(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = answered(fake_provider, conversation, "hello")
    before = everything(conversation)
    with pytest.raises(ChatError, match="Only your own messages can be edited"):
        services.message_edit(conversation=conversation, message=reply, text="rewritten")
    assert everything(conversation) == before


def test_an_empty_edit_is_refused(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    question, _ = answered(fake_provider, conversation, "hello")
    before = everything(conversation)
    with pytest.raises(ChatError, match="Type a message first"):
        services.message_edit(conversation=conversation, message=question, text="  \n ")
    assert everything(conversation) == before


def test_editing_or_regenerating_while_a_reply_is_in_flight_is_refused(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    question, first_reply = answered(fake_provider, conversation, "hello")
    _, pending = send(conversation, "second")  # queued, no worker runs it
    before = everything(conversation)
    with pytest.raises(ChatError, match="still being written"):
        services.message_edit(conversation=conversation, message=question, text="changed")
    with pytest.raises(ChatError, match="still being written"):
        services.turn_regenerate(message=first_reply)
    with pytest.raises(ChatError, match="still being written"):
        services.branch_switch(conversation=conversation, message=question, version=1)
    assert everything(conversation) == before
    assert pending.status == Message.Status.QUEUED


def test_a_version_out_of_range_is_refused_and_nothing_changes(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = answered(fake_provider, conversation, "hello")
    run(fake_provider, services.turn_regenerate(message=reply))
    before = everything(conversation)
    for version in (0, 3, -1):
        with pytest.raises(ChatError, match="There is no version"):
            services.branch_switch(conversation=conversation, message=reply, version=version)
    assert everything(conversation) == before


def test_a_message_of_another_conversation_is_refused(alice, fake_provider):
    conversation, key = start_chat(alice, fake_provider)
    question, _ = answered(fake_provider, conversation, "hello")
    other = services.conversation_create(owner=alice, key=key, model="gpt-test")
    before = everything(other)
    with pytest.raises(ChatError, match="not part of this conversation"):
        services.message_edit(conversation=other, message=question, text="moved")
    with pytest.raises(ChatError, match="not part of this conversation"):
        services.branch_switch(conversation=other, message=question, version=1)
    assert everything(other) == before


def test_an_edit_is_admitted_like_a_send(alice, fake_provider, settings):
    from usage.models import NO_KEY, MonthlySpend
    from usage.services import spend_cap_set

    conversation, _ = start_chat(alice, fake_provider)
    question, _ = answered(fake_provider, conversation, "hello")
    spend_cap_set(owner=alice, key_id=None, limit_micro=1)
    MonthlySpend.objects.filter(owner=alice, key_id=NO_KEY).update(spent_micro=1)
    before = everything(conversation)
    with pytest.raises(ChatError, match="reached"):
        services.message_edit(conversation=conversation, message=question, text="again")
    with pytest.raises(ChatError, match="reached"):
        services.turn_regenerate(message=Message.objects.get(parent=question))
    assert everything(conversation) == before


# --- views ----------------------------------------------------------------------------------


def edit_url(conversation, message):
    return reverse("chat:edit", args=[conversation.pk, message.pk])


def version_url(conversation, message):
    return reverse("chat:version", args=[conversation.pk, message.pk])


def test_edit_and_version_views_are_a_404_to_another_user(client, alice, bob, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    question, _ = answered(fake_provider, conversation, "Alice's question")
    before = everything(conversation)
    client.force_login(bob)
    response = client.post(edit_url(conversation, question), {"text": "hijack"})
    assert response.status_code == 404
    response = client.post(version_url(conversation, question), {"version": "1"})
    assert response.status_code == 404
    # Bob's own conversation with Alice's message id: still a 404.
    bobs, _ = start_chat(bob, fake_provider, label="Bob's key")
    assert client.post(edit_url(bobs, question), {"text": "x"}).status_code == 404
    assert client.post(version_url(bobs, question), {"version": "1"}).status_code == 404
    assert everything(conversation) == before


def test_a_message_id_of_another_conversation_is_a_404(alice_client, alice, fake_provider):
    conversation, key = start_chat(alice, fake_provider)
    question, _ = answered(fake_provider, conversation, "hello")
    other = services.conversation_create(owner=alice, key=key, model="gpt-test")
    assert alice_client.post(edit_url(other, question), {"text": "x"}).status_code == 404
    assert alice_client.post(version_url(other, question), {"version": "1"}).status_code == 404
    assert not other.messages.exists()


def test_the_views_need_post_and_a_login(client, alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    question, _ = answered(fake_provider, conversation, "hello")
    for url in (edit_url(conversation, question), version_url(conversation, question)):
        response = client.post(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("accounts:login"))
        client.force_login(alice)
        assert client.get(url).status_code == 405
        client.logout()


def test_editing_without_js_redirects_to_the_page_showing_the_new_branch(
    alice_client, alice, fake_provider
):
    conversation, _ = start_chat(alice, fake_provider)
    question, _ = answered(fake_provider, conversation, "Old words")
    response = alice_client.post(edit_url(conversation, question), {"text": "New words"})
    assert response.status_code == 302
    assert response["Location"] == reverse("chat:conversation", args=[conversation.pk])
    html = alice_client.get(response["Location"]).content.decode()
    assert "New words" in html and "Old words" not in html.split('id="messages"')[1]
    assert 'class="version-label" aria-hidden="true">2/2<' in html
    assert version_url(conversation, question) not in html  # the old version is not shown
    edited = Message.objects.get(parent=None, role="user", created_at__gt=question.created_at)
    assert version_url(conversation, edited) in html  # its switcher goes back to it


def test_bad_edits_and_versions_say_why_with_htmx_and_without(alice_client, alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    question, reply = answered(fake_provider, conversation, "hello")
    before = everything(conversation)
    url = edit_url(conversation, question)
    response = alice_client.post(url, {"text": "   "}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert response["HX-Retarget"] == f"#edit-error-{question.pk}"
    assert "Type a message first." in response.content.decode()
    response = alice_client.post(edit_url(conversation, reply), {"text": "x"}, follow=True)
    assert "Only your own messages can be edited" in response.content.decode()
    response = alice_client.post(edit_url(conversation, reply), {"text": "x"}, HTTP_HX_REQUEST="1")
    assert response.status_code == 422
    assert response["HX-Retarget"] == "#composer-error"  # a reply has no edit form
    for version in ("2", "0", "abc", ""):
        response = alice_client.post(
            version_url(conversation, question), {"version": version}, HTTP_HX_REQUEST="true"
        )
        assert response.status_code == 422, version
        assert response["HX-Retarget"] == "#composer-error"
    response = alice_client.post(version_url(conversation, question), {"version": "7"}, follow=True)
    assert "There is no version 7 of this message; it has 1." in response.content.decode()
    assert everything(conversation) == before


def test_htmx_gets_the_active_branch_to_swap_in(alice_client, alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    question, reply = answered(fake_provider, conversation, "Question one", "Answer one")
    response = alice_client.post(
        reverse("chat:regenerate", args=[reply.pk]), HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    html = response.content.decode()
    new = Message.objects.filter(parent=question).exclude(pk=reply.pk).get()
    assert f'id="message-{new.pk}"' in html and f'id="message-{reply.pk}"' not in html
    assert 'data-stream-url="/chat/m/' in html  # the new reply streams in
    assert ">2/2<" in html
    run(fake_provider, new, "Answer two")
    response = alice_client.post(
        version_url(conversation, new), {"version": "1"}, HTTP_HX_REQUEST="true"
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "Answer one" in html and "Answer two" not in html and ">1/2<" in html


def test_the_page_offers_edit_on_every_user_message_and_regenerate_on_every_reply(
    alice_client, alice, fake_provider
):
    conversation, _ = start_chat(alice, fake_provider)
    pairs = [answered(fake_provider, conversation, f"question {n}") for n in range(2)]
    html = alice_client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    for question, reply in pairs:
        assert edit_url(conversation, question) in html
        assert f'action="{reverse("chat:regenerate", args=[reply.pk])}"' in html
    assert "version-label" not in html  # no siblings, no switcher


# --- export, usage, migration -----------------------------------------------------------------


def test_the_export_holds_every_branch_with_parent_ids(alice_client, alice, fake_provider):
    from tests.test_security_export import build, read_zip

    conversation, _ = start_chat(alice, fake_provider)
    question, _ = answered(fake_provider, conversation, "the first words", "reply one")
    edited, edited_reply = services.message_edit(
        conversation=conversation, message=question, text="the second words"
    )
    run(fake_provider, edited_reply, "reply two")
    export = build(alice)
    download = alice_client.get(reverse("privacy:export_download", args=[export.pk]))
    files = read_zip(download.content)
    data = json.loads(next(v for k, v in files.items() if k.startswith("conversations/")))
    by_text = {m["text"]: m for m in data["messages"]}
    assert set(by_text) == {"the first words", "reply one", "the second words", "reply two"}
    assert by_text["the first words"]["parent_id"] is None
    assert by_text["the second words"]["parent_id"] is None
    assert by_text["reply one"]["parent_id"] == str(question.pk)
    assert by_text["reply two"]["parent_id"] == str(edited.pk)
    assert data["active_leaf_id"] == str(edited_reply.pk)


def test_usage_counts_the_turns_of_every_branch(alice, fake_provider):
    from usage.models import UsageEvent

    conversation, _ = start_chat(alice, fake_provider)
    question, reply = answered(fake_provider, conversation, "hello")
    regenerated = run(fake_provider, services.turn_regenerate(message=reply))
    _, edited_reply = services.message_edit(
        conversation=conversation, message=question, text="hello again"
    )
    run(fake_provider, edited_reply)
    recorded = set(UsageEvent.objects.for_owner(alice).values_list("message_id", flat=True))
    assert recorded == {reply.pk, regenerated.pk, edited_reply.pk}


def test_the_migration_chains_existing_messages(alice, fake_provider):
    migration = importlib.import_module("chat.migrations.0007_message_parent")
    from django.apps import apps

    conversation, _ = start_chat(alice, fake_provider)
    empty, _ = start_chat(alice, fake_provider, label="Second")
    for text in ("one", "two"):
        answered(fake_provider, conversation, text)
    ids = list(
        Message.objects.filter(conversation=conversation)
        .order_by("created_at", "id")
        .values_list("id", flat=True)
    )
    # As before the migration: no parents, no active leaf.
    Message.objects.update(parent=None)
    Conversation.objects.update(active_leaf=None)
    migration.chain_messages(apps, None)
    parents = dict(Message.objects.values_list("id", "parent_id"))
    assert [parents[i] for i in ids] == [None, *ids[:-1]]
    conversation.refresh_from_db()
    assert conversation.active_leaf_id == ids[-1]
    empty.refresh_from_db()
    assert empty.active_leaf_id is None


def test_acting_on_a_branch_while_a_reply_is_written_says_why(alice_client, alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    question, reply = answered(fake_provider, conversation, "hello")
    send(conversation, "second")  # queued, no worker runs it
    before = everything(conversation)
    for url, data in (
        (edit_url(conversation, question), {"text": "changed"}),
        (reverse("chat:regenerate", args=[reply.pk]), {}),
        (version_url(conversation, question), {"version": "1"}),
    ):
        response = alice_client.post(url, data, HTTP_HX_REQUEST="true")
        assert response.status_code == 422, url
        assert "still being written" in response.content.decode()
        page = alice_client.post(url, data, follow=True).content.decode()
        assert "still being written" in page
    assert everything(conversation) == before
