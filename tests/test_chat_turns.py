"""Whole turns through a real Celery worker, real Redis, the ASGI server and the fake provider."""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

from chat import services, streams, turns
from chat.models import Message
from chat.selectors import message_view
from core import streams as live
from keys.models import ProviderKey
from tests.chat_helpers import read_stream, send, start_chat, wait_final
from tests.opened import error_of
from tests.waiting import wait_until
from vault.services import OwnerCipher

pytestmark = pytest.mark.django_db(transaction=True)


def chat_calls(fake):
    return [r for r in fake.requests if r.method == "POST"]


def text_of(message):
    return message_view(message, OwnerCipher(message.owner)).text


@pytest.mark.parametrize(
    ("preset", "base_path", "model"),
    [
        ("custom", "openai", "gpt-test"),
        ("anthropic", "anthropic", "claude-test"),
        ("gemini", "gemini", "gemini-test"),
    ],
)
def test_a_turn_streams_deltas_then_done_for_each_protocol(
    alice, fake_provider, celery_worker, asgi_server, preset, base_path, model, settings
):
    chat_path = {
        "custom": "/chat/completions",
        "anthropic": "/messages",
        "gemini": "streamGenerateContent",
    }[preset]
    fake_provider.script(
        text="Hello from the fake provider, token by token.", tokens_per_second=200, path=chat_path
    )
    conversation, key = (
        start_chat(alice, fake_provider, model=model)
        if preset == "custom"
        else _vendor_chat(alice, fake_provider, preset, base_path, model)
    )
    _, reply = send(conversation)
    events = read_stream(asgi_server, alice, reply)
    kinds = [e.event for e in events]
    assert kinds[-1] == "done", events[-1]
    assert kinds.count("delta") >= 2, "the reply should arrive in pieces"
    streamed = "".join(e.data["text"] for e in events if e.event == "delta")
    assert streamed == "Hello from the fake provider, token by token."
    assert "<p>Hello from the fake provider" in events[-1].data["html"]
    reply = wait_final(reply)
    assert reply.status == Message.Status.DONE
    assert text_of(reply) == streamed
    assert reply.output_tokens and reply.input_tokens
    assert reply.ttft_ms is not None
    assert reply.latency_ms is not None
    assert reply.latency_ms >= reply.ttft_ms
    assert reply.provider_key_id == key.pk
    assert reply.provider_calls == 1
    assert len(chat_calls(fake_provider)) == 1
    # The final event carries the small print a reload shows (key, tokens, first token).
    facts = {name: events[-1].data[name] for name in ("via", "usage")}
    assert facts == {
        "via": f"via {key.label}",
        # No price for the test models: said so, never $0.00.
        "usage": f"{reply.input_tokens} in · {reply.output_tokens} out · price unknown · "
        f"first token {reply.ttft_ms} ms",
    }
    from core.redis import get_redis

    get_redis().delete(streams.stream_key(reply.pk))
    (stored,) = read_stream(asgi_server, alice, reply)
    assert {name: stored.data[name] for name in ("via", "usage")} == facts


def _vendor_chat(owner, fake, preset, base_path, model):
    from chat.services import conversation_create
    from tests.keys_helpers import add_key

    key = add_key(owner, fake, preset="custom", base_url=fake.base_url("openai"))
    # The vault binds a key to its preset and base URL; re-seal it as a vendor key at the fake.
    ProviderKey.objects.filter(pk=key.pk).update(preset=preset, base_url=fake.base_url(base_path))
    key.refresh_from_db()
    from keys.services import _seal_secret

    _seal_secret(key, "sk-test-good-0123456789abcdefWXYZ")
    key.save(update_fields=["sealed_secret", "fingerprint"])
    return conversation_create(owner=owner, key=key, model=model), key


def test_a_reconnect_with_last_event_id_resumes_without_gaps_or_duplicates(
    alice, fake_provider, celery_worker, asgi_server
):
    reply_text = " ".join(f"word{i}" for i in range(60))
    fake_provider.script(
        text=reply_text, tokens_per_second=150, tokens_per_chunk=1, path="/chat/completions"
    )
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    first = read_stream(asgi_server, alice, reply, stop_after=3)
    assert [e.event for e in first] == ["delta"] * 3
    rest = read_stream(asgi_server, alice, reply, last_event_id=first[-1].id)
    joined = "".join(e.data.get("text", "") for e in first + rest if e.event == "delta")
    assert joined == reply_text
    assert rest[-1].event == "done"
    # A page reload replays everything from the start.
    again = read_stream(asgi_server, alice, reply)
    assert "".join(e.data.get("text", "") for e in again if e.event == "delta") == reply_text


def test_an_expired_stream_is_served_from_the_database(
    alice, fake_provider, celery_worker, asgi_server
):
    conversation, _ = start_chat(alice, fake_provider)
    fake_provider.script(text="Stored **answer**.", path="/chat/completions")
    _, reply = send(conversation)
    wait_final(reply)
    from core.redis import get_redis

    get_redis().delete(streams.stream_key(reply.pk))
    events = read_stream(asgi_server, alice, reply)
    assert [e.event for e in events] == ["done"]
    assert "<strong>answer</strong>" in events[0].data["html"]


def test_stop_ends_the_turn_and_its_provider_call_and_keeps_the_partial_text(
    alice, fake_provider, celery_worker, asgi_server
):
    from providers import aio

    # 50 s of reply: longer than any wait below, so only the stop can end it in time.
    fake_provider.script(
        text=" ".join(["slow"] * 1000), tokens_per_second=20, path="/chat/completions"
    )
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    first = read_stream(asgi_server, alice, reply, stop_after=2)
    assert first
    services.turn_cancel(message=reply)
    reply = wait_final(reply, timeout=30)
    assert reply.status == Message.Status.STOPPED
    wait_until(lambda: not aio.calls_in_flight(), "the provider call outlived the stop")
    kept = text_of(reply)
    assert kept.startswith("slow")
    assert len(kept.split()) < 1000
    rest = read_stream(asgi_server, alice, reply, last_event_id=first[-1].id)
    assert rest[-1].event == "done" and rest[-1].data["status"] == "stopped"
    # The provider never reported usage for the cut-off stream: the reply shows the same
    # estimate that was billed, marked as one.
    from usage.models import UsageEvent

    billed = UsageEvent.objects.get(message_id=reply.pk)
    assert reply.tokens_estimated
    assert (reply.input_tokens, reply.output_tokens) == (
        billed.input_tokens,
        billed.output_tokens,
    )
    assert reply.output_tokens == max(1, len(kept) // 4)
    assert (reply.ttft_ms, reply.latency_ms) == (billed.ttft_ms, billed.latency_ms)
    assert rest[-1].data["usage"] == f"≈ {reply.input_tokens} in · {reply.output_tokens} out" + (
        f" · price unknown · first token {reply.ttft_ms} ms"
    )
    assert rest[-1].data["continuable"] == "1"  # a stopped reply with text can be continued


def test_stopping_a_queued_turn_never_calls_the_provider(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)  # no worker running: the turn waits in the queue
    services.turn_cancel(message=reply)
    reply.refresh_from_db()
    assert reply.status == Message.Status.STOPPED
    turns.run_turn(str(reply.pk))  # a late delivery finds nothing to claim
    assert chat_calls(fake_provider) == []


def test_a_redelivered_task_never_calls_the_provider_twice(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE
    assert len(chat_calls(fake_provider)) == 1


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        ("invalid_key", "invalid_key", "rejected"),
        ("no_credit", "no_credit", "credit"),
        ("context_too_long", "context_too_long", "too long"),
        ("model_not_found", "bad_request", "rejected"),
        ("bad_request", "bad_request", "rejected"),
    ],
)
def test_each_error_class_ends_the_turn_with_a_message(alice, fake_provider, error, kind, words):
    fake_provider.script(error=error, path="/chat/completions")
    conversation, key = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR
    assert reply.error_kind == kind
    assert words in error_of(reply).lower()
    assert "sk-test" not in error_of(reply)
    if kind in ("invalid_key", "no_credit"):
        key.refresh_from_db()
        assert key.status == {"invalid_key": "invalid", "no_credit": "no_credit"}[kind]


def test_a_rejected_request_quotes_the_providers_words_once(alice, fake_provider, client):
    said = "Unknown parameter temprature in the request body"
    fake_provider.script(error="bad_request", error_message=said, path="/chat/completions")
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.error_kind == "bad_request"
    assert error_of(reply).count(said) == 1, error_of(reply)
    client.force_login(alice)
    page = client.get(reverse("chat:conversation", args=[conversation.pk])).content.decode()
    assert page.count(said) == 1
    assert "The provider rejected the request." in page


def test_rate_limits_are_retried_before_the_first_token_honouring_retry_after(alice, fake_provider):
    fake_provider.script(error="rate_limited", retry_after=0.2, path="/chat/completions")
    fake_provider.script(status=503, path="/chat/completions")
    fake_provider.script(text="Third time lucky.", path="/chat/completions")
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE, error_of(reply)
    assert text_of(reply) == "Third time lucky."
    assert reply.provider_calls == 3


def test_retries_stop_after_two(alice, fake_provider):
    for _ in range(4):
        fake_provider.script(status=503, path="/chat/completions")
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR
    assert reply.error_kind == "unavailable"
    assert len(chat_calls(fake_provider)) == 3


def test_a_retry_after_beyond_the_budget_is_not_waited_for(alice, fake_provider):
    fake_provider.script(error="rate_limited", retry_after=60, path="/chat/completions")
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.error_kind == "rate_limited"
    assert "60 seconds" in error_of(reply)
    assert "Wait a moment" not in error_of(reply)  # when to retry is said once
    assert len(chat_calls(fake_provider)) == 1


def test_a_one_second_retry_after_is_said_in_the_singular(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    for _ in range(3):  # the call and its two retries
        fake_provider.script(error="rate_limited", retry_after=1, path="/chat/completions")
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.error_kind == "rate_limited"
    assert "Try again in 1 second." in error_of(reply)


@pytest.mark.parametrize(
    "fault",
    [
        {"drop_after_tokens": 3},
        {"malformed_after_tokens": 3},
        {"stream_error": "overloaded", "stream_error_after_tokens": 3},
    ],
)
def test_a_stream_that_breaks_after_the_first_token_is_never_retried_and_keeps_the_text(
    alice, fake_provider, fault
):
    fake_provider.script(text="one two three four five six", path="/chat/completions", **fault)
    fake_provider.script(text="must not be used", path="/chat/completions")
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR
    assert "cut off" in error_of(reply)
    assert text_of(reply).startswith("one")
    assert len(chat_calls(fake_provider)) == 1


def test_a_failing_key_falls_back_to_the_next_key_and_records_which_served(alice, fake_provider):
    from tests.keys_helpers import add_key

    fake_provider.accept_only_keys("sk-second-key-000000000000")
    conversation, first = start_chat(alice, fake_provider, label="First")
    second = add_key(alice, fake_provider, label="Second", secret="sk-second-key-000000000000")
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE, error_of(reply)
    assert reply.provider_key_id == second.pk
    assert "“Second” answered instead" in reply.notice
    first.refresh_from_db()
    assert first.status == ProviderKey.Status.INVALID


def test_no_usable_key_explains_and_points_to_the_keys_page(alice, fake_provider):
    conversation, key = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    ProviderKey.objects.filter(pk=key.pk).update(
        status=ProviderKey.Status.REVOKED, sealed_secret=b""
    )
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR
    assert reply.error_kind == "no_key"
    assert "Keys page" in error_of(reply)


def test_a_worker_that_died_mid_turn_is_reaped_with_a_retry(alice, fake_provider, settings):
    from datetime import timedelta

    from django.utils import timezone

    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    Message.objects.filter(pk=reply.pk).update(
        status=Message.Status.RUNNING, started_at=timezone.now() - timedelta(hours=2)
    )
    assert services.turns_reap() == 1
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR
    assert "stopped before finishing" in error_of(reply)
    turns.run_turn(str(reply.pk))  # the redelivered task does nothing
    assert chat_calls(fake_provider) == []
    new_reply = services.turn_regenerate(message=reply)
    turns.run_turn(str(new_reply.pk))
    new_reply.refresh_from_db()
    assert new_reply.status == Message.Status.DONE
    # The failed reply stays, one version back: a sibling of the new one.
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR and new_reply.parent_id == reply.parent_id


def test_a_turn_no_worker_picks_up_fails_with_a_clear_message(alice, fake_provider, settings):
    from datetime import timedelta

    from django.utils import timezone

    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    Message.objects.filter(pk=reply.pk).update(created_at=timezone.now() - timedelta(minutes=10))
    services.turns_reap()  # queued once more first
    reply.refresh_from_db()
    assert reply.status == Message.Status.QUEUED and reply.requeued_at is not None
    Message.objects.filter(pk=reply.pk).update(requeued_at=timezone.now() - timedelta(minutes=2))
    assert services.turns_reap() == 1
    reply.refresh_from_db()
    assert reply.error_kind == "no_worker"
    assert "the task queue may have lost it" in error_of(reply)
    assert "even after it was queued again" in error_of(reply)


def test_redis_going_away_mid_turn_still_stores_the_reply(alice, fake_provider, settings):
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE
    assert text_of(reply)


def test_the_history_is_sent_and_the_oldest_turns_are_trimmed_to_fit(
    alice, fake_provider, settings
):
    conversation, _ = start_chat(alice, fake_provider)
    for text in ("first question " * 20, "second question " * 20):
        _, reply = send(conversation, text)
        turns.run_turn(str(reply.pk))
    settings.BYOK_CONTEXT_MAX_CHARS = 700
    _, reply = send(conversation, "third question")
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    body = chat_calls(fake_provider)[-1].body
    sent = [m["content"] for m in body["messages"] if m["role"] != "system"]
    assert sent[-1] == "third question"
    assert not any("first question" in content for content in sent)
    assert reply.trimmed_messages == 0 or "left out" in reply.notice
    assert "left out to fit" in reply.notice


def test_usage_is_stored_once(alice, fake_provider):
    fake_provider.script(
        text="Counted.",
        usage={"input_tokens": 11, "output_tokens": 7, "cached_tokens": 3},
        path="/chat/completions",
    )
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert (reply.input_tokens, reply.output_tokens, reply.cached_tokens) == (11, 7, 3)
    from accounts.models import AuditEvent

    assert AuditEvent.objects.get(action="key.used").count == 1


def test_many_open_streams_share_one_redis_reader_per_process(
    alice, fake_provider, asgi_server, settings
):
    import asyncio

    import httpx

    from core.redis import get_redis
    from tests.chat_helpers import session_cookie

    settings.BYOK_MAX_CONCURRENT_TURNS = 100
    settings.BYOK_WEB_REDIS_CONNECTIONS = 3
    replies = []
    for index in range(15):  # no worker: every turn stays queued and its stream stays open
        conversation, _ = start_chat(alice, fake_provider, label=f"key {index}")
        replies.append(send(conversation)[1])
    cookies = session_cookie(alice)
    before = len(get_redis().client_list())
    keys = [streams.stream_key(reply.pk) for reply in replies]

    def all_followed() -> bool:
        """Every stream is subscribed, and the hub's blocking read covers them all."""
        hubs = [h for h in list(live._hubs.values()) if any(k in h.subscriptions for k in keys)]
        followed = sum(len(hub.subscriptions.get(key, ())) for hub in hubs for key in keys)
        return followed == len(keys) and all(hub._blocked and not hub._stale for hub in hubs)

    async def follow(client, reply, opened):
        url = f"{asgi_server.url}/chat/m/{reply.pk}/stream/"
        async with client.stream("GET", url) as response:
            opened.append(reply.pk)
            async for line in response.aiter_lines():
                if line.startswith("event: done"):
                    return "done"
        return "closed"

    async def scenario():
        opened: list = []
        async with httpx.AsyncClient(cookies=cookies, timeout=30) as client:
            tasks = [asyncio.create_task(follow(client, reply, opened)) for reply in replies]
            deadline = time.monotonic() + 30
            while not (len(opened) == len(replies) and all_followed()):
                assert time.monotonic() < deadline, f"{len(opened)} of {len(replies)} streams"
                await asyncio.sleep(0.05)
            during = len(get_redis().client_list())
            for reply in replies:
                await asyncio.to_thread(services.turn_cancel, message=reply)
            results = await asyncio.gather(*tasks)
        return during, results

    # In a thread of its own: the browser tests leave an event loop running in this one.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        during, results = pool.submit(asyncio.run, scenario()).result()
    assert results == ["done"] * len(replies)
    # The pool (3) and the hub's reader: not one connection per stream.
    assert during - before <= 4, f"{during - before} Redis connections for {len(replies)} streams"


@pytest.mark.parametrize("preset", ["anthropic", "gemini"])
@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("invalid_key", "invalid_key"),
        ("rate_limited", "rate_limited"),
        ("overloaded", "unavailable"),
        ("context_too_long", "context_too_long"),
        ("bad_request", "bad_request"),
    ],
)
def test_each_error_class_of_each_vendor_protocol_ends_the_turn_in_words(
    alice, fake_provider, preset, error, kind
):
    from tests.chat_helpers import CHAT_PATHS, vendor_chat

    conversation, _ = vendor_chat(alice, fake_provider, preset, f"{preset}-model")
    for _ in range(3):  # rate limits and overloads are retried twice first
        fake_provider.script(error=error, retry_after=0.05, path=CHAT_PATHS[preset])
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR
    assert reply.error_kind == kind
    assert error_of(reply) and "sk-test" not in error_of(reply)


@pytest.mark.parametrize("preset", ["anthropic", "gemini"])
def test_a_vendor_stream_error_after_the_first_token_keeps_the_text(alice, fake_provider, preset):
    from tests.chat_helpers import CHAT_PATHS, vendor_chat

    conversation, _ = vendor_chat(alice, fake_provider, preset, f"{preset}-model")
    fake_provider.script(
        text="alpha beta gamma delta",
        stream_error="overloaded",
        stream_error_after_tokens=2,
        path=CHAT_PATHS[preset],
    )
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR
    assert "cut off" in error_of(reply)
    assert text_of(reply).startswith("alpha")
    assert len([r for r in fake_provider.requests if r.method == "POST"]) == 1
