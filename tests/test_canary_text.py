"""Plant canary conversation text and search Redis and the database for it: while a reply
streams, after it, when the provider's error quotes the user, and after deletion.

The text may be read only through the owner's pages; every store holds it sealed.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from chat import services, streams
from chat.models import Message
from core.redis import get_redis
from privacy.services import account_delete
from tests.chat_helpers import read_stream, send, start_chat, wait_final
from tests.opened import error_of
from tests.stores import database_rows_containing, redis_entries_containing
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def canary(name: str) -> str:
    return f"CANARY{name}{uuid.uuid4().hex}"


def stream_entries(reply: Message) -> int:
    return int(get_redis().xlen(streams.stream_key(reply.pk)))


def test_a_streaming_reply_is_sealed_in_redis_during_and_after_the_turn(
    alice, fake_provider, celery_worker, asgi_server
):
    asked, answer = canary("asked"), canary("answer")
    words = " ".join([answer, *(["word"] * 40), answer])
    fake_provider.script(text=words, tokens_per_second=40, path="/chat/completions")
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation, text=f"Tell me about {asked}")

    # While it streams: entries are in Redis, none readable.
    wait_until(lambda: stream_entries(reply) >= 2, "the reply did not start streaming")
    assert redis_entries_containing(answer) == []
    assert redis_entries_containing(asked) == []

    # The owner still reads it live, and after it.
    events = read_stream(asgi_server, alice, reply, timeout=60)
    assert events[-1].event == "done"
    assert answer in "".join(e.data.get("text", "") for e in events if e.event == "delta")
    assert answer in events[-1].data["html"]
    assert wait_final(reply).status == Message.Status.DONE
    assert stream_entries(reply) > 0  # the stream is still there (replays), sealed
    assert redis_entries_containing(answer) == []
    assert database_rows_containing(answer) == []
    assert database_rows_containing(asked) == []


def test_a_provider_error_that_quotes_the_user_is_sealed(
    alice, fake_provider, celery_worker, asgi_server
):
    quoted = canary("quoted")
    fake_provider.script(
        error="bad_request",
        error_message=f"Invalid content near '{quoted}' in message 1",
        path="/chat/completions",
    )
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation, text=f"Please read {quoted}")
    events = read_stream(asgi_server, alice, reply, timeout=60)
    assert events[-1].event == "error" and quoted in events[-1].data["message"]
    assert wait_final(reply).status == Message.Status.ERROR
    assert quoted in error_of(reply)  # the owner reads it on the page
    assert database_rows_containing(quoted) == []
    assert redis_entries_containing(quoted) == []
    # And it is shown once, from the stored (sealed) outcome when the stream is gone.
    get_redis().delete(streams.stream_key(reply.pk))
    stored = read_stream(asgi_server, alice, reply, timeout=60)
    assert stored[-1].event == "error" and quoted in stored[-1].data["message"]


def test_an_entry_not_sealed_by_the_owner_is_never_shown(
    alice, bob, fake_provider, celery_worker, asgi_server
):
    """Somebody who can write to Redis cannot put words into a user's reply."""
    fake_provider.script(text="the real reply", path="/chat/completions")
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    assert wait_final(reply).status == Message.Status.DONE
    key = streams.stream_key(reply.pk)
    redis = get_redis()
    redis.delete(key)
    from vault.services import OwnerCipher

    redis.xadd(key, {"type": "delta", "text": "<script>forged</script>"})
    bobs: Any = streams.seal_entry(OwnerCipher(bob), reply.pk, "delta", {"text": "bob's"})
    redis.xadd(key, bobs)
    redis.xadd(key, {"type": "done", "status": "done", "html": "<p>forged</p>", "notice": ""})
    events = read_stream(asgi_server, alice, reply, timeout=60)
    shown = repr([e.data for e in events])
    assert "forged" not in shown and "bob's" not in shown
    assert events[-1].event == "done" and "the real reply" in events[-1].data["html"]


def test_deleting_a_conversation_or_an_account_deletes_its_streams(
    alice, fake_provider, celery_worker
):
    for _ in range(2):
        fake_provider.script(text="one two three", path="/chat/completions")
    first, _ = start_chat(alice, fake_provider)
    _, kept = send(first)
    second = services.conversation_create(owner=alice, key=first.provider_key, model="gpt-test")
    _, gone = send(second)
    for reply in (kept, gone):
        assert wait_final(reply).status == Message.Status.DONE
        assert stream_entries(reply) > 0

    services.conversation_delete(conversation=second)
    assert stream_entries(gone) == 0
    assert stream_entries(kept) > 0

    account_delete(user=alice)
    assert stream_entries(kept) == 0
    assert [key for key in get_redis().scan_iter("byok:turn:*")] == []
