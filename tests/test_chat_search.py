from __future__ import annotations

from datetime import datetime, timedelta
from datetime import time as dt_time

import pytest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from chat import search, selectors, services
from chat.models import (
    PURPOSE_MESSAGE,
    PURPOSE_TITLE,
    Conversation,
    ConversationSearchIndex,
    Message,
)
from chat.services import _title_from
from vault.services import OwnerCipher

pytestmark = pytest.mark.django_db


def chat(owner, title, *messages, when=None, **fields):
    """A conversation with a sealed title and sealed messages (user, reply, user, ...)."""
    cipher = OwnerCipher(owner)
    conversation = Conversation(owner=owner, preset="custom", model="m", **fields)
    conversation.sealed_title = cipher.seal(PURPOSE_TITLE, conversation.pk, title)
    if when is not None:
        conversation.last_message_at = when
    conversation.save()
    start = timezone.now() - timedelta(minutes=len(messages))
    made = []
    for index, text in enumerate(messages):
        message = Message(
            conversation=conversation,
            owner=owner,
            role="user" if index % 2 == 0 else "assistant",
            created_at=start + timedelta(seconds=index),
            finished_at=start + timedelta(seconds=index),
        )
        message.sealed_content = cipher.seal(PURPOSE_MESSAGE, message.pk, text)
        message.save()
        made.append(message)
    return conversation, made


def searched(owner, query) -> selectors.SearchResults:
    results = selectors.conversation_search(owner=owner, query=query)
    assert results is not None
    return results


def found(client, query):
    response = client.get(reverse("chat:search"), {"q": query})
    assert response.status_code == 200
    return response.content.decode()


# --- titles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("# Hello **world**", "Hello world"),
        ("## Why does `git rebase` *lose* my __changes__?", "Why does git rebase lose my changes?"),
        ("```python\nprint('hi')\n```\nWhat does this do?", "print('hi') What does this do?"),
        ("- [x] item _one_ and snake_case_name", "item one and snake_case_name"),
        ("1. first\n2) second", "first second"),
        ("| a | b |\n|---|:-:|\n| 1 | 2 |", "a b 1 2"),
        ("See [the docs](https://example.com/x) and ![a cat](cat.png)", "See the docs and a cat"),
        ("Mail <https://example.com>", "Mail https://example.com"),
        ("Use `**kwargs` in *Python*", "Use **kwargs in Python"),
        ("2 * 3 * 4 = 24", "2 * 3 * 4 = 24"),
        ("> quoted\n> ***both*** ~~gone~~", "quoted both gone"),
        ("Title\n=====\n\n---\nbody   text\n\n\n", "Title body text"),
        ("a_b_c _d_", "a_b_c d"),
        ("<b>not html</b>", "<b>not html</b>"),  # escaped where shown, never stripped blind
        ("---", "---"),  # nothing but syntax: its text
    ],
)
def test_titles_are_plain_text(text, title):
    assert _title_from(text) == title


def test_a_long_title_is_cut_at_60_characters_with_an_ellipsis():
    title = _title_from("**" + ("word " * 40).strip() + "**")
    assert len(title) == 60
    assert title.endswith("…")
    assert "*" not in title


def test_a_title_of_a_huge_message_is_quick_and_plain():
    title = _title_from("**a " * 50_000)  # unclosed emphasis everywhere
    assert len(title) <= 60


def test_the_first_message_gives_a_plain_title(alice, fake_provider):
    from tests.chat_helpers import send, start_chat

    conversation, _ = start_chat(alice, fake_provider)
    send(conversation, "## Fix **this** [bug](https://x.test)\n\n```\ntrace\n```")
    conversation.refresh_from_db()
    assert selectors.conversation_title(conversation) == "Fix this bug trace"


# --- search: what it finds ----------------------------------------------------------------


def test_it_finds_a_word_in_a_title_a_question_and_a_reply(alice_client, alice):
    by_title, _ = chat(alice, "Marmalade recipes", "How long do I boil it?")
    _, (question, _) = chat(alice, "Cooking", "Is quince jelly hard?", "Not at all.")
    _, (_, reply) = chat(alice, "Travel", "Where to go?", "Try Lisbon in the spring.")

    html = found(alice_client, "marmalade")
    assert reverse("chat:conversation", args=[by_title.pk]) in html
    assert "<mark>Marmalade</mark> recipes" in html

    html = found(alice_client, "quince")
    assert f"#message-{question.pk}" in html
    assert "<mark>quince</mark> jelly" in html

    html = found(alice_client, "LISBON")
    assert f"#message-{reply.pk}" in html
    assert "Try <mark>Lisbon</mark> in the spring." in html


def test_what_is_typed_so_far_finds_the_words_it_begins(alice_client, alice):
    _, (_, reply) = chat(alice, "Ops", "How do I deploy?", "Use Kubernetes with Helm charts.")
    assert f"#message-{reply.pk}" in found(alice_client, "kube")
    assert f"#message-{reply.pk}" in found(alice_client, "kubernetes hel")
    assert "Nothing matches" in found(alice_client, "ubernetes")  # not the middle of a word


def test_every_word_must_be_in_one_message(alice_client, alice):
    chat(alice, "A", "the error is here", "the budget is there")
    _, (both, _) = chat(alice, "B", "error budget spent", "ok")
    html = found(alice_client, "budget error")
    assert f"#message-{both.pk}" in html
    assert html.count("#message-") == 1


def test_it_searches_every_message_of_a_conversation(alice_client, alice):
    texts = [f"message number {i} about topic{i}" for i in range(12)]
    _, made = chat(alice, "Long chat", *texts)
    for i in (0, 5, 11):
        assert f"#message-{made[i].pk}" in found(alice_client, f"topic{i}")


def test_another_users_conversations_never_appear(client, alice, bob):
    chat(bob, "Bob's plans for Zanzibar", "Zanzibar in July", "Zanzibar is warm")
    mine, _ = chat(alice, "Alice's notes", "nothing to see")
    client.force_login(alice)
    html = found(client, "zanzibar")
    assert "Nothing matches" in html
    assert "Bob" not in html
    client.force_login(bob)
    html = found(client, "zanzibar")
    assert html.count("<li>") == 3  # the title and both messages
    assert str(mine.pk) not in html


@pytest.mark.parametrize(
    ("query", "expected", "not_expected"),
    [
        (".*", "Regex .* trick", "Plain talk"),
        ("%", "Half 50% off", "Plain talk"),
        ("_", "snake_case names", "Plain talk"),
        ("'", "It's quoted", "Plain talk"),
        ("o'clock", "five o'clock tea", "Plain talk"),
    ],
)
def test_metacharacters_match_literally_in_titles(
    alice_client, alice, query, expected, not_expected
):
    for title in ["Regex .* trick", "Half 50% off", "snake_case names", "It's quoted"]:
        chat(alice, title, "body")
    chat(alice, "five o'clock tea", "body")
    chat(alice, "Plain talk", "body")
    html = found(alice_client, query)
    assert "<mark>" in html
    assert not_expected not in html
    assert escape(expected) in html.replace("<mark>", "").replace("</mark>", "")


def test_metacharacters_in_message_text_match_literally_and_render_escaped(alice_client, alice):
    _, (_, reply) = chat(
        alice, "Web", "How do I show code?", "Write <script>alert(1)</script> as text; 100% safe."
    )
    chat(alice, "Other", "a script without brackets", "100 percent")
    html = found(alice_client, "<script>")
    assert f"#message-{reply.pk}" in html
    assert "<script>alert" not in html
    assert "<mark>&lt;script&gt;</mark>alert(1)&lt;/script&gt;" in html
    assert html.count("#message-") == 1  # "script" alone is not "<script>"
    html = found(alice_client, "100%")
    assert f"#message-{reply.pk}" in html
    assert html.count("#message-") == 1
    assert "Nothing matches" in found(alice_client, "alert' OR '1'='1")


def test_a_query_without_a_word_of_two_letters_searches_titles_only(alice_client, alice):
    chat(alice, "Notes", "50 % of it")
    html = found(alice_client, "%")
    assert "Nothing matches" in html
    assert "search inside messages too" in html


def test_a_10000_character_query_is_clipped_to_200_and_searched(alice_client, alice):
    chat(alice, "Notes", "alpha beta")
    html = found(alice_client, "alpha " + "x" * 9_994)
    assert "Only the first 200 characters were searched." in html
    assert "Nothing matches" in html
    results = searched(alice, "alpha " + "y" * 9_994)
    assert len(results.query) == 200
    assert results.clipped


def test_a_snippet_is_short_plain_and_cut_around_the_hit(alice_client, alice):
    long_text = ("filler words here " * 40) + "the **needle** is <b>here</b>" + (" more text" * 60)
    chat(alice, "Haystack", "find it", long_text)
    html = found(alice_client, "needle")
    snippet = html.split('class="snippet small">', 1)[1].split("</span>\n", 1)[0]
    assert "…" in snippet
    assert "<mark>needle</mark>" in snippet
    assert "&lt;b&gt;here&lt;/b&gt;" in snippet
    assert len(snippet) < 400


def test_an_empty_query_gives_the_list_back(alice_client, alice):
    chat(alice, "Today's chat", "hi")
    html = found(alice_client, "   ")
    assert '<h2 class="sidebar-group">Today</h2>' in html
    assert "Today&#x27;s chat" in html


def test_the_page_without_javascript_searches_and_keeps_the_chat_open(alice_client, alice):
    open_chat, _ = chat(alice, "Open one", "hello")
    _, (question, _) = chat(alice, "Other", "about walruses", "yes")
    url = reverse("chat:conversation", args=[open_chat.pk])
    html = alice_client.get(url, {"q": "walrus"}).content.decode()
    assert f"#message-{question.pk}" in html
    assert '<h1 class="chat-title" id="chat-title">Open one</h1>' in html
    assert f'action="{url}"' in html  # the search form stays on this page


def test_search_needs_a_login_and_a_get(client, alice_client):
    assert alice_client.post(reverse("chat:search"), {"q": "x"}).status_code == 405
    client.logout()
    response = client.get(reverse("chat:search"), {"q": "x"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("accounts:login"))


# --- search: the index --------------------------------------------------------------------


def test_the_index_holds_no_readable_word(alice):
    conversation, _ = chat(alice, "T", "unmistakablesecretword", "anotherrareword")
    assert search.search_index_build(owner=alice) == 1
    index = ConversationSearchIndex.objects.get(conversation=conversation)
    bloom = bytes(index.bloom)
    for word in ("unmistakablesecretword", "unmistak", "anotherrareword"):
        assert word.encode() not in bloom
        assert word not in index.signature
    assert index.owner == alice


def test_the_index_rules_out_conversations_that_cannot_match(alice):
    hit, _ = chat(alice, "A", "pelican brief")
    chat(alice, "B", "something else entirely")
    search.search_index_build(owner=alice)
    conversations = list(Conversation.objects.for_owner(alice))
    cipher = OwnerCipher(alice)
    maybe = search.candidates(
        owner=alice, cipher=cipher, conversations=conversations, terms=["pelican"]
    )
    assert maybe == [hit.pk]
    assert (
        search.candidates(
            owner=alice, cipher=cipher, conversations=conversations, terms=["xylophonist"]
        )
        == []
    )


def test_a_new_message_is_found_though_the_index_was_built_before(alice, fake_provider):
    from tests.chat_helpers import send, start_chat

    conversation, _ = start_chat(alice, fake_provider)
    send(conversation, "first words only")
    search.search_index_build(owner=alice)
    assert not searched(alice, "wombat").hits
    reply = conversation.messages.get(role="assistant")
    cipher = OwnerCipher(alice)
    reply.sealed_content = cipher.seal(PURPOSE_MESSAGE, reply.pk, "a wombat appears")
    reply.status = Message.Status.DONE
    reply.finished_at = timezone.now()
    reply.save()
    hits = searched(alice, "wombat").hits
    assert [hit.message_id for hit in hits] == [reply.pk]


def test_conversations_left_unindexed_are_still_searched_and_a_backfill_is_queued(
    alice, monkeypatch, django_capture_on_commit_callbacks
):
    from core.redis import get_redis

    monkeypatch.setattr(search, "REFRESH_BUDGET_SECONDS", -1.0)  # index nothing in the request
    monkeypatch.setattr(search, "REFRESH_BATCH", 1)
    get_redis().delete(search._backfill_key(alice.pk))
    _, (question, _) = chat(alice, "A", "the okapi question", "answer")
    queued = []
    monkeypatch.setattr(
        "chat.tasks.search_index_refresh.apply_async",
        lambda args, queue: queued.append((args, queue)),
    )
    with django_capture_on_commit_callbacks(execute=True):
        hits = searched(alice, "okapi").hits
    assert [hit.message_id for hit in hits] == [question.pk]
    assert queued == [((alice.pk,), "default")]
    assert not ConversationSearchIndex.objects.exists()

    from chat.tasks import search_index_refresh

    search_index_refresh(alice.pk)  # what the worker runs
    assert ConversationSearchIndex.objects.filter(owner=alice).count() == 1
    assert get_redis().get(search._backfill_key(alice.pk)) is None


# --- the sidebar: groups, pins, menu ------------------------------------------------------


@pytest.mark.parametrize(
    ("days_ago", "label"),
    [
        (-1, "Today"),
        (0, "Today"),
        (1, "Yesterday"),
        (2, "Previous 7 days"),
        (7, "Previous 7 days"),
        (8, "Previous 30 days"),
        (30, "Previous 30 days"),
        (31, "Older"),
        (400, "Older"),
    ],
)
def test_date_groups(days_ago, label):
    today = timezone.localdate()
    assert selectors.date_group(today - timedelta(days=days_ago), today) == label


def _local(days_ago: int, at: dt_time) -> datetime:
    day = timezone.localdate() - timedelta(days=days_ago)
    return timezone.make_aware(datetime.combine(day, at))


def test_the_sidebar_groups_by_local_date_with_pins_on_top(alice, settings):
    settings.TIME_ZONE = "Pacific/Auckland"  # far from UTC: the local date is what counts
    with timezone.override("Pacific/Auckland"):
        chat(alice, "just after midnight", when=_local(0, dt_time(0, 5)))
        chat(alice, "late yesterday", when=_local(1, dt_time(23, 55)))
        chat(alice, "a week ago", when=_local(7, dt_time(12)))
        chat(alice, "eight days ago", when=_local(8, dt_time(12)))
        chat(alice, "a month ago", when=_local(30, dt_time(12)))
        chat(alice, "long ago", when=_local(31, dt_time(12)))
        chat(alice, "pinned and old", when=_local(90, dt_time(12)), pinned=True)
        chat(alice, "archived", archived=True)
        groups = selectors.conversation_groups(owner=alice).groups
    assert [(g.label, [i.title for i in g.items]) for g in groups] == [
        ("Pinned", ["pinned and old"]),
        ("Today", ["just after midnight"]),
        ("Yesterday", ["late yesterday"]),
        ("Previous 7 days", ["a week ago"]),
        ("Previous 30 days", ["eight days ago", "a month ago"]),
        ("Older", ["long ago"]),
    ]
    archived = selectors.conversation_groups(owner=alice, archived=True).groups
    assert [i.title for g in archived for i in g.items] == ["archived"]


def test_a_long_list_stops_at_the_limit_and_offers_the_rest(alice_client, alice):
    for days in range(4):
        chat(alice, f"chat {days}", when=timezone.now() - timedelta(days=days))
    chat(alice, "pinned", when=timezone.now() - timedelta(days=50), pinned=True)
    sidebar = selectors.conversation_groups(owner=alice, limit=2)
    assert [i.title for g in sidebar.groups for i in g.items] == ["pinned", "chat 0", "chat 1"]
    assert sidebar.hidden == 2
    html = alice_client.get(reverse("chat:home")).content.decode()
    assert "Show 2 older" not in html  # under the page's limit
    assert selectors.conversation_groups(owner=alice, limit=None).hidden == 0


def test_pin_and_unpin_from_the_menu(alice_client, alice):
    conversation, _ = chat(alice, "Keep me handy", "hi", when=timezone.now() - timedelta(days=40))
    other, _ = chat(alice, "Other", "hi")
    here = reverse("chat:conversation", args=[other.pk])
    html = alice_client.get(here).content.decode()
    pin_url = reverse("chat:pin", args=[conversation.pk])
    assert f'action="{pin_url}"' in html
    response = alice_client.post(pin_url, {"pinned": "1", "next": here})
    assert response["Location"] == here + "#conversations"  # the list open again (a drawer)
    conversation.refresh_from_db()
    assert conversation.pinned
    html = alice_client.get(here).content.decode()
    assert html.index(">Pinned</h2>") < html.index("Keep me handy") < html.index(">Today</h2>")
    assert ">Unpin</button>" in html
    alice_client.post(pin_url, {"pinned": "0"})
    conversation.refresh_from_db()
    assert not conversation.pinned
    assert ">Pinned</h2>" not in alice_client.get(here).content.decode()


def test_rename_and_archive_from_the_menu_come_back_to_the_page(alice_client, alice):
    conversation, _ = chat(alice, "Old name", "hi")
    here = reverse("chat:home")
    rename = reverse("chat:rename", args=[conversation.pk])
    html = alice_client.get(here).content.decode()
    assert f'action="{rename}"' in html
    assert reverse("chat:delete", args=[conversation.pk]) in html  # the confirm page
    response = alice_client.post(rename, {"title": "New name", "next": here})
    assert response["Location"] == here + "#conversations"
    assert selectors.conversation_title(Conversation.objects.get(pk=conversation.pk)) == "New name"
    response = alice_client.post(
        reverse("chat:archive", args=[conversation.pk]), {"next": here + "?archived=1"}
    )
    assert response["Location"] == here + "?archived=1#conversations"
    conversation.refresh_from_db()
    assert conversation.archived


def test_a_next_on_another_site_is_ignored(alice_client, alice):
    conversation, _ = chat(alice, "Mine", "hi")
    response = alice_client.post(
        reverse("chat:pin", args=[conversation.pk]), {"pinned": "1", "next": "https://evil.test/"}
    )
    assert response["Location"] == reverse("chat:conversation", args=[conversation.pk])


def test_the_menu_actions_are_a_404_on_another_users_conversation(client, alice, bob):
    conversation, _ = chat(alice, "Alice's", "hi")
    client.force_login(bob)
    for name, data in [
        ("chat:pin", {"pinned": "1"}),
        ("chat:rename", {"title": "pwned"}),
        ("chat:archive", {}),
        ("chat:delete", {}),
    ]:
        response = client.post(reverse(name, args=[conversation.pk]), data)
        assert response.status_code == 404, name
    assert client.get(reverse("chat:delete", args=[conversation.pk])).status_code == 404
    conversation.refresh_from_db()
    assert not conversation.pinned and not conversation.archived
    assert selectors.conversation_title(conversation) == "Alice's"


def test_pin_needs_a_post_and_a_login(client, alice_client, alice):
    conversation, _ = chat(alice, "Mine", "hi")
    url = reverse("chat:pin", args=[conversation.pk])
    assert alice_client.get(url).status_code == 405
    client.logout()
    assert client.post(url, {"pinned": "1"}).status_code == 302
    conversation.refresh_from_db()
    assert not conversation.pinned


def test_the_pin_service_saves_only_the_flag(alice):
    conversation, _ = chat(alice, "Mine", "hi")
    services.conversation_pin(conversation=conversation, pinned=True)
    assert Conversation.objects.get(pk=conversation.pk).pinned
    services.conversation_pin(conversation=conversation, pinned=False)
    assert not Conversation.objects.get(pk=conversation.pk).pinned


def test_blind_tokens_are_per_owner_and_purpose(alice, bob):
    alices, bobs = OwnerCipher(alice), OwnerCipher(bob)
    token = alices.blind_tokens("chat_search_index", ["heliotrope"])[0]
    assert token == OwnerCipher(alice).blind_tokens("chat_search_index", ["heliotrope"])[0]
    assert token != bobs.blind_tokens("chat_search_index", ["heliotrope"])[0]
    assert token != alices.blind_tokens("other_purpose", ["heliotrope"])[0]
    assert token != alices.blind_tokens("chat_search_index", ["heliotropes"])[0]
    assert b"heliotrope" not in token and len(token) == 32
