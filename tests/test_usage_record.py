"""The write per finished turn (usage.recording): one statement on PostgreSQL, the same rows
as the step-by-step rendering of the same declarations, nothing twice, caps settled exactly;
and the usage page's cache follows the rollups."""

from __future__ import annotations

import itertools
import random
import threading
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from tests.usage_helpers import price
from usage import recording
from usage.models import (
    NO_KEY,
    ErrorDaily,
    LatencyDaily,
    ModelPrice,
    MonthlySpend,
    ProviderDaily,
    Reservation,
    RollupStamp,
    UsageConversationDaily,
    UsageDaily,
    UsageEvent,
    UserActivity,
)
from usage.prices import Price, TokenCounts, cost_micro, price_for
from usage.recording import TurnUsage, usage_record
from usage.services import budget_reserve, month_start, spend_cap_remove, spend_cap_set

pytestmark = pytest.mark.django_db
postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the one-statement write path is PostgreSQL's"
)

KEY = uuid.UUID("11111111-2222-3333-4444-555555555555")


_ids = itertools.count(1)


def next_id():
    return uuid.UUID(int=next(_ids) << 64)


def turn(owner, **changes):
    values = {
        "owner_id": owner.pk,
        "message_id": next_id(),
        "conversation_id": next_id(),
        "key_id": KEY,
        "key_label": "Work key",
        "preset": "custom",
        "model": "gpt-test",
        "status": "done",
        "error_kind": "",
        "tokens": TokenCounts(input=1200, output=345, cached=200),
        "reasoning_tokens": 7,
        "ttft_ms": 420,
        "latency_ms": 2100,
    }
    values.update(changes)
    values.setdefault("price", price_for(values["preset"], values["model"]))
    return TurnUsage(**values)


def reserve(owner, usage, *, input_estimate, max_output):
    """Hold `usage`'s worst case under the owner's caps, as the worker does before a call."""
    budget_reserve(
        owner=owner,
        message_id=usage.message_id,
        key_id=usage.key_id,
        key_label=usage.key_label,
        model=usage.model,
        price=usage.price,
        input_tokens_bound=input_estimate,
        max_output_tokens=max_output,
    )


# What the write path changes, without surrogate keys, timestamps and random stamps.
TABLES = {
    UsageEvent: ("id", "created_at"),
    UsageDaily: ("id",),
    UsageConversationDaily: ("id",),
    MonthlySpend: ("id",),
    Reservation: ("id", "created_at"),
    RollupStamp: ("stamp",),
    ProviderDaily: ("id",),
    ErrorDaily: ("id",),
    LatencyDaily: ("id",),
    UserActivity: (),
}


def snapshot():
    rows = {}
    for model, ignored in TABLES.items():
        fields = [f.attname for f in model._meta.concrete_fields if f.attname not in ignored]
        rows[model.__name__] = sorted(
            repr(row) for row in model._default_manager.values_list(*fields)
        )
    return rows


def run_scenario(record, scenario, alice, bob):
    """Run `scenario` with `record` as the write path; return what it left, then undo it."""
    global _ids
    _ids = itertools.count(1)  # the same message and conversation ids on every run
    with transaction.atomic():
        callbacks_before = len(connection.run_on_commit)
        results = scenario(record, alice, bob)
        warnings = len(connection.run_on_commit) - callbacks_before
        state = snapshot()
        transaction.set_rollback(True)
    return results, warnings, state


def one_statement(turn_usage):
    return usage_record(turn=turn_usage)


def step_by_step(turn_usage):
    """The same declarations, one statement after the other (what SQLite runs)."""
    original = recording._write_in_one_statement
    recording._write_in_one_statement = recording._write_step_by_step
    try:
        return usage_record(turn=turn_usage)
    finally:
        recording._write_in_one_statement = original


def mixed_turns(record, alice, bob):
    price("custom", "gpt-test")
    price("custom", "gpt-cache", input=1.0, output=2.0, cache_read=0.1, cache_write=1.25)
    first = turn(alice)
    done = [
        record(first),
        record(turn(alice, conversation_id=first.conversation_id)),  # rollups add up
        record(turn(alice, model="gpt-cache", tokens=TokenCounts(5000, 100, 1000, 2000))),
        record(turn(alice, status="error", error_kind="rate_limited", tokens=TokenCounts(0, 0))),
        record(turn(alice, status="error", error_kind="", ttft_ms=None, latency_ms=None)),
        record(turn(alice, model="mystery", key_label="Other")),  # price unknown
        record(turn(bob, key_id=None, key_label="", conversation_id=None, ttft_ms=None)),
        record(turn(bob, status="stopped", latency_ms=400_000)),
        record(first),  # a duplicate delivery
    ]
    return done


def turns_under_caps(record, alice, bob):
    price("custom", "gpt-test", input=1.0, output=1.0, cache_read=None)
    spend_cap_set(owner=alice, key_id=None, limit_micro=100_000)
    spend_cap_set(owner=alice, key_id=KEY, limit_micro=60_000)
    done = []
    for output in (20_000, 30_000, 1_000):  # the second crosses 80% of the key's cap
        usage = turn(alice, tokens=TokenCounts(input=1_000, output=output))
        reserve(alice, usage, input_estimate=1_000, max_output=5_000)
        done.append(record(usage))
    # A turn whose key cap was removed while it ran: its reservation still comes off both.
    last = turn(alice, tokens=TokenCounts(input=10, output=10))
    reserve(alice, last, input_estimate=10, max_output=10)
    spend_cap_remove(owner=alice, key_id=KEY)
    done.append(record(last))
    # A turn reserved last month settles into last month's ledger.
    previous = month_start(month_start(timezone.localdate()) - timedelta(days=1))
    MonthlySpend.objects.create(owner=alice, key_id=NO_KEY, month=previous, reserved_micro=500)
    late = turn(alice, tokens=TokenCounts(input=100, output=100))
    Reservation.objects.create(
        owner=alice, message_id=late.message_id, key_id=KEY, month=previous, amount_micro=500
    )
    done.append(record(late))
    # No cap at all (bob): nothing is settled, and his reservation-less turn is fine.
    done.append(record(turn(bob)))
    done.append(record(late))
    return done


def activity_moves(record, alice, bob):
    today = timezone.localdate()
    UserActivity.objects.create(user=alice, last_turn_on=today - timedelta(days=3))
    UserActivity.objects.create(user=bob, last_turn_on=today)
    return [record(turn(alice)), record(turn(alice)), record(turn(bob))]


@postgresql_only
@pytest.mark.parametrize("scenario", [mixed_turns, turns_under_caps, activity_moves])
def test_one_statement_writes_exactly_what_the_step_by_step_path_writes(alice, bob, scenario):
    expected = run_scenario(step_by_step, scenario, alice, bob)
    assert run_scenario(one_statement, scenario, alice, bob) == expected
    results, warnings, state = expected
    assert results.count(False) == (0 if scenario is activity_moves else 1)  # duplicates
    if scenario is turns_under_caps:
        assert warnings == 1  # the key's cap passed 80%: one e-mail
        assert not state["Reservation"]


@postgresql_only
def test_without_prepared_statements_it_writes_the_same(alice, bob, settings):
    expected = run_scenario(one_statement, mixed_turns, alice, bob)
    settings.BYOK_DB_PREPARED_STATEMENTS = False
    assert run_scenario(one_statement, mixed_turns, alice, bob) == expected


@postgresql_only
def test_a_turn_is_recorded_in_one_statement(alice):
    price("custom", "gpt-test")
    usage_record(turn=turn(alice))  # the connection prepares the statement once
    second = turn(alice)  # its price was looked up when it started
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        assert usage_record(turn=second) is True
    assert [q["sql"].split("(")[0] for q in queries.captured_queries] == [
        "EXECUTE byok_usage_record"
    ]


def test_the_recorded_cost_is_cost_micro_of_the_price_the_turn_ran_at(alice):
    generator = random.Random(6)
    for case in range(60):
        model = f"model-{case}"
        prices = Price(
            input=generator.choice([0, 1, 150_000, 3_000_000, 75_000_000]),
            output=generator.choice([0, 600_000, 15_000_000, 150_000_000]),
            cache_read=generator.choice([None, 0, 30_000, 300_000]),
            cache_write=generator.choice([None, 187_500, 3_750_000]),
        )
        ModelPrice.objects.create(
            preset="custom",
            model=model,
            input_per_mtok=prices.input,
            output_per_mtok=prices.output,
            cache_read_per_mtok=prices.cache_read,
            cache_write_per_mtok=prices.cache_write,
        )
        tokens = TokenCounts(
            input=generator.randint(0, 2_000_000),
            output=generator.randint(0, 200_000),
            cached=generator.randint(0, 1_000_000),
            cache_write=generator.randint(0, 1_000_000),
        )
        usage = turn(alice, model=model, tokens=tokens)
        usage_record(turn=usage)
        event = UsageEvent.objects.get(message_id=usage.message_id)
        assert event.cost_micro == cost_micro(prices, tokens), (prices, tokens)
        assert (event.price_input, event.price_cache_write) == (prices.input, prices.cache_write)


def test_recording_a_turn_twice_changes_nothing(alice):
    price("custom", "gpt-test")
    spend_cap_set(owner=alice, key_id=None, limit_micro=10_000_000)
    usage = turn(alice)
    assert usage_record(turn=usage) is True
    before = snapshot()
    stamp = RollupStamp.objects.get(owner=alice).stamp
    assert usage_record(turn=usage) is False
    assert snapshot() == before
    assert RollupStamp.objects.get(owner=alice).stamp == stamp


def test_each_recorded_turn_renews_the_owners_rollup_stamp(alice, bob):
    usage_record(turn=turn(alice))
    first = RollupStamp.objects.get(owner=alice).stamp
    usage_record(turn=turn(alice))
    assert RollupStamp.objects.get(owner=alice).stamp != first
    assert not RollupStamp.objects.filter(owner=bob).exists()


# --- the usage page's cache -------------------------------------------------------------------


def rollup_reads(client):
    with CaptureQueriesContext(connection) as queries:
        html = client.get(reverse("usage:home")).content.decode()
    return html, sum("usage_usagedaily" in q["sql"] for q in queries.captured_queries)


def test_the_usage_page_reads_the_rollups_again_only_after_they_change(alice_client, alice):
    price("custom", "gpt-test")
    usage_record(turn=turn(alice))
    one_turn, two_turns = '<span class="value">1</span>', '<span class="value">2</span>'
    html, reads = rollup_reads(alice_client)
    assert "$0.0082" in html and one_turn in html and reads == 1
    html, reads = rollup_reads(alice_client)
    assert "$0.0082" in html and one_turn in html and reads == 0  # from the cache
    usage_record(turn=turn(alice))
    html, reads = rollup_reads(alice_client)
    assert "$0.02" in html and two_turns in html and reads == 1  # the new turn, at once


def test_a_cached_usage_page_is_never_shown_to_another_user(client, alice, bob):
    price("custom", "gpt-test")
    usage_record(turn=turn(alice, key_label="Alices key"))
    usage_record(turn=turn(bob, key_label="Bobs key"))
    client.force_login(alice)
    assert "Alices key" in client.get(reverse("usage:home")).content.decode()
    client.force_login(bob)
    html = client.get(reverse("usage:home")).content.decode()
    assert "Bobs key" in html and "Alices key" not in html


def test_a_repaired_rollup_shows_on_the_usage_page(alice_client, alice):
    price("custom", "gpt-test")
    usage_record(turn=turn(alice))
    UsageDaily.objects.filter(owner=alice).update(cost_micro=99_000_000)
    assert "$99.00" in alice_client.get(reverse("usage:home")).content.decode()
    call_command("usage_reconcile")
    html = alice_client.get(reverse("usage:home")).content.decode()
    assert "$0.0082" in html and "$99.00" not in html


def test_conversation_titles_are_read_on_every_request(alice_client, alice, fake_provider):
    from chat.models import Conversation
    from tests.chat_helpers import start_chat

    conversation, _ = start_chat(alice, fake_provider)
    usage_record(turn=turn(alice, conversation_id=conversation.pk))
    alice_client.get(reverse("usage:home"))
    Conversation.objects.filter(pk=conversation.pk).delete()
    html = alice_client.get(reverse("usage:home")).content.decode()
    assert '<td class="stack-title">Deleted conversation</td>' in html  # shown, no link
    assert reverse("chat:conversation", args=[conversation.pk]) not in html


@postgresql_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("active_before", [None, 3])
def test_concurrent_turns_of_one_user_count_them_active_once(alice, active_before):
    today = timezone.localdate()
    if active_before is not None:
        earlier = today - timedelta(days=active_before)
        UserActivity.objects.create(user=alice, last_turn_on=earlier)
    turns = [turn(alice) for _ in range(12)]
    barrier = threading.Barrier(len(turns))

    def record(usage):
        barrier.wait()
        try:
            with transaction.atomic():
                usage_record(turn=usage)
        finally:
            connection.close()

    threads = [threading.Thread(target=record, args=(usage,)) for usage in turns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert UsageDaily.objects.get(owner=alice).turns == 12
    assert ProviderDaily.objects.get(day=today, preset="custom").turns == 12
    assert UserActivity.objects.get(user=alice).last_turn_on == today
