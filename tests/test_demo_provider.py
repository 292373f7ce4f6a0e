"""The local demo provider gives a newcomer a working chat with no key and no internet."""

from __future__ import annotations

import json

import httpx
import pytest
from django.urls import reverse

from byok_site.demo_provider import (
    DEMO_REPLY,
    SLOW_FIRST_TOKEN_DELAY,
    SLOW_MODEL,
    SLOW_REPLY,
    SLOW_TOKENS_PER_SECOND,
    DemoProvider,
    quote_markdown,
)
from chat import turns
from chat.branches import joined_text
from chat.models import Message
from chat.rendering import render_markdown
from chat.selectors import conversation_branch, message_view
from chat.services import conversation_create, message_send
from keys.models import ProviderKey
from keys.services import KeyVaultError, RequestInfo, _seal_secret, provider_key_create
from providers.continuation import CONTINUE_INSTRUCTION
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


def demo_chat(alice, settings, demo_server, model="byok-demo"):
    """A conversation on a demo key, pointed at the test's own demo server."""
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
    return conversation_create(owner=alice, key=key, model=model)


def test_a_demo_turn_goes_through_the_vault_the_worker_path_and_the_stream(
    alice, settings, demo_server
):
    conversation = demo_chat(alice, settings, demo_server)
    _, reply = message_send(conversation=conversation, text="Is anybody there?")
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE, error_of(reply)
    text = message_view(reply, OwnerCipher(alice)).text
    assert "local demo provider" in text
    assert "Is anybody there?" in text
    assert reply.output_tokens


MULTILINE = "First line\nsecond line\n\n```python\nprint('hi')\n```\n\n- a\n- b"


def test_the_demo_quotes_the_message_line_for_line(alice, settings, demo_server):
    conversation = demo_chat(alice, settings, demo_server)
    _, reply = message_send(conversation=conversation, text=MULTILINE)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    text = message_view(reply, OwnerCipher(alice)).text
    assert (
        "> First line\n> second line\n>\n> ```python\n> print('hi')\n> ```\n>\n> - a\n> - b" in text
    )
    html = render_markdown(text)
    quote = html[html.index("<blockquote>") : html.index("</blockquote>")]
    # The fenced block is still a code block, inside the quote; the lines stay lines.
    assert 'class="code-block' in quote and "print" in quote
    assert "<li>a</li>" in quote and "First line\nsecond line" in quote


def test_the_quote_of_an_empty_or_long_message():
    assert quote_markdown("") == "> (nothing)"
    assert quote_markdown("\n\n") == "> (nothing)"
    long = quote_markdown("x" * 10_000)
    assert long.startswith("> x") and len(long) < 4010


def _streamed(demo_server, model, *, until=None, messages=None):
    """The text the demo streams for `model` (until `until` has arrived, then the
    connection is closed), and how many deltas that took."""
    messages = messages or [{"role": "user", "content": "hi"}]
    body = {"model": model, "stream": True, "messages": messages}
    text, deltas = "", 0
    with httpx.stream(
        "POST", f"{demo_server.url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    text += piece
                    deltas += 1
            if until is not None and until in text:
                break
    return text, deltas


def test_the_slow_model_streams_the_long_reply_a_word_at_a_time(demo_server):
    text, deltas = _streamed(demo_server, SLOW_MODEL, until="press *Stop*")
    assert SLOW_REPLY.startswith(text)
    assert text.startswith("# A slow reply")
    assert deltas >= 20  # one word per delta


def test_the_slow_reply_is_long_varied_markdown_at_a_reading_pace():
    from tests.fakes.provider import _TOKEN

    words = len(_TOKEN.findall(SLOW_REPLY))
    assert 500 <= words <= 700
    assert 10 <= SLOW_TOKENS_PER_SECOND <= 20 and 0.3 <= SLOW_FIRST_TOKEN_DELAY <= 1
    html = render_markdown(SLOW_REPLY)
    for part in ("<h1>", "<h2>", "<ol>", "<ul>", "<table>", 'class="code-block', "<math"):
        assert part in html, part
    assert 'display="block"' in html  # the display formula


def test_the_slow_model_is_suggested_for_the_demo_preset():
    from providers.catalog import PRESETS

    assert PRESETS["demo"].popular_models == ("byok-demo", SLOW_MODEL)


def test_an_unknown_model_name_gets_the_normal_reply(demo_server):
    text, _ = _streamed(demo_server, "some-other-model")
    assert text == DEMO_REPLY.format(quote="> hi")


def test_a_demo_turn_costs_nothing_and_says_so(alice, settings, demo_server):
    from usage.models import UsageEvent
    from usage.prices import load_shipped_prices

    load_shipped_prices()  # the shipped list prices the demo at 0
    conversation = demo_chat(alice, settings, demo_server)
    _, reply = message_send(conversation=conversation, text="How much?")
    turns.run_turn(str(reply.pk))
    event = UsageEvent.objects.get(message_id=reply.pk)
    assert event.cost_micro == 0  # a known price of nothing, not "unknown" (None)
    conversation.refresh_from_db()
    usage = conversation_branch(conversation)[-1].facts["usage"]
    assert " · $0.00" in usage and "price unknown" not in usage


@pytest.mark.parametrize("model", ["byok-demo", SLOW_MODEL])
def test_continue_gets_the_rest_of_the_reply(demo_server, model):
    whole = SLOW_REPLY if model == SLOW_MODEL else DEMO_REPLY.format(quote="> hi")
    partial = whole[:150].rstrip()
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": partial},
        {"role": "user", "content": CONTINUE_INSTRUCTION},
    ]
    rest = whole[len(partial) :]
    until = rest[:40] if model == SLOW_MODEL else None
    text, _ = _streamed(demo_server, model, until=until, messages=messages)
    if until is None:
        assert text == rest
        assert joined_text([partial, text]) == whole  # the page shows the whole reply
    else:  # the slow one is read only as far as its first words
        assert rest.startswith(text) and until in text
