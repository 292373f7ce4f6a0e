"""Nothing the user saw is lost: a worker killed mid-reply (SIGKILL, a real process), a
database that goes away while a reply finishes, a queued turn the broker lost.

The worker saves a running reply's text (sealed) every BYOK_TURN_CHECKPOINT_SECONDS and
holds a lease in Redis; the reaper ends a turn whose lease stayed expired with that text,
and Stop ends such a turn at once.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from chat import services, streams, turns
from chat.models import PURPOSE_MESSAGE, Message
from completion import engine
from core.redis import get_redis
from tests.chat_helpers import send, start_chat
from tests.opened import error_of
from tests.processes import TcpProxy, database_url, worker_process
from tests.waiting import wait_until
from usage.models import UsageEvent
from vault.services import OwnerCipher

pytestmark = pytest.mark.django_db(transaction=True)

WORDS = [f"word{i}" for i in range(600)]
REPLY = " ".join(WORDS)
FAST_LEASES = {"BYOK_TURN_LEASE_SECONDS": "2", "BYOK_TURN_CHECKPOINT_SECONDS": "0.2"}


@pytest.fixture
def fast_leases(settings):
    settings.BYOK_TURN_LEASE_SECONDS = 2
    settings.BYOK_TURN_CHECKPOINT_SECONDS = 0.2


def saved_text(reply: Message) -> str:
    reply.refresh_from_db()
    return OwnerCipher(reply.owner).open(PURPOSE_MESSAGE, reply.pk, reply.sealed_content)


def streamed_text(reply: Message) -> str:
    """The deltas in the turn's stream, opened as its owner's page would."""
    return streams.streamed_text(OwnerCipher(reply.owner), reply.pk)


def slow_reply(fake_provider) -> None:
    fake_provider.script(text=REPLY, tokens_per_second=20, path="/chat/completions")


def reap_until_final(reply: Message) -> Message:
    def ended() -> bool:
        services.turns_reap()
        reply.refresh_from_db()
        return reply.is_final

    wait_until(ended, "the reaper did not end the turn", timeout=90)
    return reply


def test_a_worker_killed_mid_reply_leaves_the_text_it_showed_and_the_reaper_ends_it(
    alice, fake_provider, fast_leases
):
    slow_reply(fake_provider)
    conversation, _ = start_chat(alice, fake_provider)
    with worker_process(**FAST_LEASES) as worker:
        _, reply = send(conversation)
        wait_until(lambda: len(saved_text(reply).split()) >= 10, "no checkpoint", timeout=60)
        worker.kill()
    shown = streamed_text(reply)  # what the user's page showed
    checkpoint = saved_text(reply)
    assert checkpoint and REPLY.startswith(checkpoint) and REPLY.startswith(shown)
    assert reply.status == Message.Status.RUNNING  # nobody ended it yet

    reap_until_final(reply)
    assert reply.status == Message.Status.ERROR and reply.error_kind == "worker_lost"
    kept = saved_text(reply)
    assert kept == max(shown, checkpoint, key=len)  # every word the user saw
    assert "What arrived is kept" in error_of(reply)
    # Billed once, as an estimate of what was kept.
    (event,) = UsageEvent.objects.filter(message_id=reply.pk)
    assert event.tokens_estimated and event.output_tokens == len(kept) // 4
    # The final event carries the text, so the open page keeps it.
    entries: Any = get_redis().xrange(streams.stream_key(reply.pk))
    finals = [fields for _, fields in entries if fields["type"] == "error"]
    (final,) = [streams.open_entry(OwnerCipher(alice), reply.pk, f) for f in finals]
    assert final is not None and WORDS[0] in final["html"]


def test_stop_on_a_turn_whose_worker_died_ends_it_at_once_with_its_text(
    alice, client, fake_provider, fast_leases
):
    slow_reply(fake_provider)
    conversation, _ = start_chat(alice, fake_provider)
    with worker_process(**FAST_LEASES) as worker:
        _, reply = send(conversation)
        wait_until(lambda: len(saved_text(reply).split()) >= 10, "no checkpoint", timeout=60)
        worker.kill()
    shown = streamed_text(reply)
    kept = max(shown, saved_text(reply), key=len)
    wait_until(lambda: not engine.lease_held(reply.pk), "the lease did not expire")
    client.force_login(alice)
    response = client.post(reverse("chat:cancel", args=[reply.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 204
    reply.refresh_from_db()
    assert reply.status == Message.Status.STOPPED
    assert saved_text(reply) == kept
    assert "what arrived is kept" in reply.notice


def test_a_running_turn_is_left_alone_while_its_worker_renews_the_lease(
    alice, fake_provider, fast_leases, celery_worker, settings
):
    """A Redis that lost every lease (a restart) ends nothing: the lease must stay missing
    for half a lease after the reaper first noticed."""
    settings.BYOK_TURN_LEASE_SECONDS = 2
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    Message.objects.filter(pk=reply.pk).update(
        status=Message.Status.RUNNING, started_at=timezone.now()
    )
    assert services.turns_reap() == 0  # first sighting of a missing lease: noted only
    get_redis().set(engine.lease_key(reply.pk), "1", ex=2)  # the worker renewed it
    assert services.turns_reap() == 0
    reply.refresh_from_db()
    assert reply.status == Message.Status.RUNNING


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite is a file: it cannot become unreachable"
)
def test_a_reply_finished_while_the_database_is_away_is_stored_when_it_returns(
    alice, fake_provider
):
    text = " ".join(WORDS[:80])
    fake_provider.script(text=text, tokens_per_second=40, path="/chat/completions")
    conversation, _ = start_chat(alice, fake_provider)
    config = connection.settings_dict
    proxy = TcpProxy((config.get("HOST") or "127.0.0.1", int(config.get("PORT") or 5432)))
    database = database_url(host="127.0.0.1", port=proxy.port)
    # The worker's pool gives up on a connection after a second, so the outage reaches the
    # store (instead of the pool quietly waiting it out).
    with worker_process(database=database, **FAST_LEASES, DATABASE_POOL_TIMEOUT="1") as worker:
        _, reply = send(conversation)
        wait_until(lambda: streamed_text(reply), "the reply did not start", timeout=60)
        proxy.cut()
        # The whole reply reaches the user while the worker cannot reach the database.
        wait_until(lambda: streamed_text(reply) == text, "the reply did not finish", timeout=60)
        wait_until(
            lambda: (
                "the database is unreachable; keeping the reply and retrying" in worker.output()
            ),
            "the worker never tried to store the reply",
            timeout=60,
        )
        reply.refresh_from_db()
        assert reply.status == Message.Status.RUNNING
        proxy.restore()
        wait_until(
            lambda: Message.objects.get(pk=reply.pk).is_final,
            f"the reply was not stored:\n{worker.output()}",
            timeout=120,
        )
    proxy.cut()
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE, error_of(reply)
    assert saved_text(reply) == text
    assert not reply.tokens_estimated  # the provider's own counts
    assert UsageEvent.objects.filter(message_id=reply.pk).count() == 1


def test_a_queued_turn_the_broker_lost_is_queued_again_and_answered(
    alice, fake_provider, celery_worker
):
    """Redis restarted without persistence while no worker ran: the task is gone, the row
    says queued. The reaper queues it once more; the claim still makes one provider call."""
    fake_provider.script(text="Answered after all.", path="/chat/completions")
    conversation, _ = start_chat(alice, fake_provider)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services, "_enqueue_turn", lambda message: None)  # the task is lost
        _, reply = send(conversation)
    Message.objects.filter(conversation=conversation).update(
        created_at=F("created_at") - timedelta(minutes=5)
    )
    services.turns_reap()
    wait_until(lambda: Message.objects.get(pk=reply.pk).is_final, "the turn was not answered")
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE, (reply.error_kind, error_of(reply))
    assert reply.requeued_at is not None
    assert saved_text(reply) == "Answered after all."
    turns.run_turn(str(reply.pk))  # a late copy of the lost task does nothing
    assert len([r for r in fake_provider.requests if r.method == "POST"]) == 1
    assert json.dumps(error_of(reply)) == '""'


def test_stop_right_after_a_redis_restart_does_not_end_a_turn_whose_lease_is_not_renewed_yet(
    alice, fake_provider, settings
):
    """Every lease is missing until the workers renew them: Stop then asks the worker (the
    stop flag) instead of ending the turn on the web."""
    settings.BYOK_TURN_LEASE_SECONDS = 10**9  # Redis has been up for less than a lease
    conversation, _ = start_chat(alice, fake_provider)
    _, reply = send(conversation)
    Message.objects.filter(pk=reply.pk).update(
        status=Message.Status.RUNNING, started_at=timezone.now()
    )
    services.turn_cancel(message=reply)
    reply.refresh_from_db()
    assert reply.status == Message.Status.RUNNING
    assert get_redis().exists(engine.cancel_key(reply.pk))
