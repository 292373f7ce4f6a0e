from __future__ import annotations

import pytest
from django.conf import settings
from django.urls import reverse

from chat import services
from chat.models import Conversation, Message
from chat.rendering import render_markdown
from tests.chat_helpers import send, session_cookie, start_chat

pytestmark = pytest.mark.django_db

CONVERSATION_VIEWS = [
    ("chat:conversation", {"GET"}),
    ("chat:send", {"POST"}),
    ("chat:rename", {"POST"}),
    ("chat:archive", {"POST"}),
    ("chat:temporary", {"POST"}),
    ("chat:delete", {"GET", "POST"}),
]
MESSAGE_VIEWS = [
    ("chat:cancel", {"POST"}),
    ("chat:regenerate", {"POST"}),
    ("chat:continue", {"POST"}),
]


@pytest.fixture
def alices_chat(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation, "Alice's secret question")
    return conversation, reply


def _urls(conversation, reply):
    for name, methods in CONVERSATION_VIEWS:
        yield name, reverse(name, args=[conversation.pk]), methods
    for name, methods in MESSAGE_VIEWS:
        yield name, reverse(name, args=[reply.pk]), methods


def test_every_conversation_and_message_url_is_a_404_to_another_user(client, bob, alices_chat):
    conversation, reply = alices_chat
    client.force_login(bob)
    for name, url, methods in _urls(conversation, reply):
        for method in methods:
            response = getattr(client, method.lower())(url, {"text": "hijack", "title": "pwned"})
            assert response.status_code == 404, (name, method)
    conversation.refresh_from_db()
    assert not conversation.archived and not conversation.temporary
    assert Message.objects.filter(conversation=conversation).count() == 2
    reply.refresh_from_db()
    assert reply.status == Message.Status.QUEUED


def test_anonymous_visitors_are_sent_to_log_in(client, alices_chat):
    conversation, reply = alices_chat
    for name, url, methods in [
        *_urls(conversation, reply),
        ("chat:home", reverse("chat:home"), {"GET"}),
    ]:
        for method in methods:
            response = getattr(client, method.lower())(url)
            assert response.status_code == 302, name
            assert response["Location"].startswith(reverse("accounts:login"))


def test_wrong_methods_are_405(alice_client, alices_chat):
    conversation, reply = alices_chat
    for name, url, methods in _urls(conversation, reply):
        for method in {"GET", "POST", "PUT", "DELETE"} - methods:
            assert getattr(alice_client, method.lower())(url).status_code == 405, (name, method)


@pytest.mark.django_db(transaction=True)
def test_the_stream_is_a_404_to_another_user_and_a_redirect_when_anonymous(
    alice, bob, fake_provider, asgi_server
):
    import httpx

    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    url = f"{asgi_server.url}{reverse('chat:stream', args=[reply.pk])}"
    as_bob = httpx.get(url, cookies=session_cookie(bob), timeout=5)
    assert as_bob.status_code == 404
    assert "Alice" not in as_bob.text
    anonymous = httpx.get(url, timeout=5, follow_redirects=False)
    assert anonymous.status_code == 302
    assert anonymous.headers["location"].startswith("/accounts/login/")
    posted = httpx.post(url, cookies=session_cookie(alice), timeout=5)
    assert posted.status_code in (403, 405)  # CSRF or method: never a stream


def test_the_chat_home_explains_how_to_start_without_a_key(alice_client):
    html = alice_client.get(reverse("chat:home")).content.decode()
    assert "Chat needs a key" in html
    assert reverse("keys:add") in html


def test_starting_a_conversation_with_a_key_and_model(alice_client, alice, fake_provider):
    from tests.keys_helpers import add_key

    key = add_key(alice, fake_provider)
    response = alice_client.post(
        reverse("chat:home"),
        {
            "key": str(key.pk),
            "model": "gpt-test",
            "text": "Hello",
            "system_prompt": "Be brief.",
            "temporary": "on",
        },
    )
    conversation = Conversation.objects.get(owner=alice)
    assert response["Location"] == reverse("chat:conversation", args=[conversation.pk])
    assert conversation.temporary and conversation.model == "gpt-test"
    assert b"Be brief." not in bytes(conversation.sealed_system_prompt)
    page = alice_client.get(response["Location"]).content.decode()
    assert "Be brief." in page
    assert conversation.messages.count() == 2  # the first message and its queued reply


def test_the_key_picker_names_a_provider_once(alice_client, alice, fake_provider):
    from tests.keys_helpers import add_key

    add_key(alice, fake_provider, label="Custom OpenAI-compatible")  # the preset's own name
    add_key(alice, fake_provider, label="Work")
    html = alice_client.get(reverse("chat:home")).content.decode()
    assert "Custom OpenAI-compatible · Custom OpenAI-compatible" not in html
    assert "Custom OpenAI-compatible — " in html
    assert "Work · Custom OpenAI-compatible — " in html


def test_another_users_key_cannot_be_picked(alice_client, bob, fake_provider):
    from tests.keys_helpers import add_key

    bobs = add_key(bob, fake_provider)
    response = alice_client.post(
        reverse("chat:home"),
        {"key": str(bobs.pk), "model": "gpt-test", "text": "Hi"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422
    assert "Pick one of your keys." in response.content.decode()
    assert not Conversation.objects.exists()


def test_model_suggestions_come_from_the_preset_and_the_cached_list(
    alice_client, alice, fake_provider, bob
):
    from core.redis import get_redis
    from tests.keys_helpers import add_key

    key = add_key(alice, fake_provider, preset="openai", base_url=None)
    get_redis().set(f"byok:models:{key.pk}", '["gpt-private-model"]')
    html = alice_client.get(reverse("chat:models"), {"key": str(key.pk)}).content.decode()
    assert "gpt-5-mini" in html and "gpt-private-model" in html
    bobs = add_key(bob, fake_provider, preset="openai", base_url=None, label="B")
    assert (
        "gpt"
        not in alice_client.get(reverse("chat:models"), {"key": str(bobs.pk)}).content.decode()
    )


def test_the_users_own_text_keeps_its_line_breaks_and_indentation(alice_client, alices_chat):
    conversation, reply = alices_chat
    services.turn_cancel(message=reply)
    text = "Why does this fail?\ndef f():\n    return <b>1</b>"
    alice_client.post(reverse("chat:send", args=[conversation.pk]), {"text": text})
    html = alice_client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    typed = "Why does this fail?\ndef f():\n    return &lt;b&gt;1&lt;/b&gt;"
    assert f'<div class="body plain">{typed}</div>' in html
    css = (settings.BASE_DIR / "static" / "css" / "app.css").read_text()
    assert ".message .body.plain, .system-prompt .plain { white-space: pre-wrap; }" in css


def test_sending_renders_both_bubbles_and_seals_the_text(alice_client, alices_chat):
    conversation, reply = alices_chat
    services.turn_cancel(message=reply)
    response = alice_client.post(
        reverse("chat:send", args=[conversation.pk]),
        {"text": "Second **question**"},
        HTTP_HX_REQUEST="true",
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "Second **question**" in html  # the user's own text, escaped, not rendered
    assert 'data-stream-url="/chat/m/' in html
    assert 'id="chat-title" hx-swap-oob="true">Alice&#x27;s secret question</h1>' in html
    sidebar = f'id="sidebar-title-{conversation.pk}" hx-swap-oob="true">Alice&#x27;s secret'
    assert sidebar in html  # the sidebar's entry gets the title too, without a reload
    for message in Message.objects.filter(conversation=conversation):
        assert b"question" not in bytes(message.sealed_content)


def test_a_second_send_while_a_reply_is_written_is_refused(alice_client, alices_chat):
    conversation, _ = alices_chat
    response = alice_client.post(
        reverse("chat:send", args=[conversation.pk]), {"text": "again"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    assert "still being written" in response.content.decode()
    assert Message.objects.filter(conversation=conversation).count() == 2


def test_an_oversized_message_is_refused_with_its_size(alice, fake_provider, settings):
    settings.BYOK_MAX_MESSAGE_CHARS = 100
    conversation, _ = start_chat(alice, fake_provider)
    with pytest.raises(services.ChatError, match="150 characters; the limit is 100"):
        send(conversation, "x" * 150)
    assert not Message.objects.exists()


def test_concurrent_turns_per_user_are_capped(alice, fake_provider, settings):
    settings.BYOK_MAX_CONCURRENT_TURNS = 2
    for _ in range(2):
        conversation, _ = start_chat(alice, fake_provider, label=f"k{Conversation.objects.count()}")
        send(conversation)
    conversation, _ = start_chat(alice, fake_provider, label="k-last")
    with pytest.raises(services.ChatError, match="the most allowed"):
        send(conversation)


def test_the_title_comes_from_the_first_message_and_search_finds_it(
    alice_client, alices_chat, alice, fake_provider
):
    start_chat(alice, fake_provider, label="other")
    html = alice_client.get(reverse("chat:home"), {"q": "secret quest"}).content.decode()
    assert "Alice&#x27;s <mark>secret</mark> <mark>quest</mark>ion" in html
    html = alice_client.get(reverse("chat:home"), {"q": "nothing like it"}).content.decode()
    assert "Nothing matches “nothing like it”." in html
    assert "<mark>" not in html


def test_rename_archive_temporary_and_delete(alice_client, alices_chat):
    conversation, _ = alices_chat
    alice_client.post(reverse("chat:rename", args=[conversation.pk]), {"title": "Renamed chat"})
    assert (
        "Renamed chat"
        in alice_client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    )
    alice_client.post(reverse("chat:archive", args=[conversation.pk]))
    conversation.refresh_from_db()
    assert conversation.archived
    assert "Renamed chat" not in alice_client.get(reverse("chat:home")).content.decode()
    assert (
        "Renamed chat" in alice_client.get(reverse("chat:home"), {"archived": "1"}).content.decode()
    )
    alice_client.post(reverse("chat:temporary", args=[conversation.pk]))
    conversation.refresh_from_db()
    assert conversation.temporary
    alice_client.post(reverse("chat:delete", args=[conversation.pk]))
    assert not Conversation.objects.exists()


def test_temporary_conversations_are_purged_a_day_after_their_last_message(alice, fake_provider):
    from datetime import timedelta

    from django.utils import timezone

    keep, _ = start_chat(alice, fake_provider, label="a")
    old, _ = start_chat(alice, fake_provider, label="b")
    recent, _ = start_chat(alice, fake_provider, label="c")
    Conversation.objects.filter(pk__in=[old.pk, recent.pk]).update(temporary=True)
    Conversation.objects.filter(pk__in=[keep.pk, old.pk]).update(
        last_message_at=timezone.now() - timedelta(hours=25)
    )
    assert services.conversations_purge_temporary() == 1
    assert set(Conversation.objects.values_list("pk", flat=True)) == {keep.pk, recent.pk}


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[click](javascript:alert(1))",
        '<a href="javascript:alert(1)">x</a>',
        "<iframe src=https://evil.example></iframe>",
        '<div style="background:url(javascript:alert(1))">x</div>',
    ],
)
def test_model_output_with_html_or_scripts_is_inert(hostile):
    from html.parser import HTMLParser

    class Elements(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

        def handle_starttag(self, tag, attrs):
            self.found.append((tag, attrs))

    html = render_markdown(f"Hello\n\n{hostile}\n\n```html\n{hostile}\n```")
    parser = Elements()
    parser.feed(html)
    tags = {tag for tag, _ in parser.found}
    # Paragraphs, links, and the fenced block: its header, highlighted code (spans).
    assert tags <= {"p", "pre", "code", "a", "div", "span"}, tags
    for tag, attrs in parser.found:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            assert "javascript:" not in (value or "").lower(), (tag, name, value)
            assert name != "style"


def test_markdown_renders_code_lists_and_links_safely():
    html = render_markdown(
        "# Title\n\n- a\n- b\n\n`code` and [link](https://example.com)\n\n```py\nprint(1)\n```"
    )
    assert "<h1>Title</h1>" in html
    assert "<li>a</li>" in html
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">link</a>' in html
    assert '<code class="language-py"><span class="nb">print</span>' in html
