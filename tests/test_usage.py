"""Usage events, exact costs, rollups, reconcile, spend caps, rate limits and the usage pages."""

from __future__ import annotations

import csv
import io
import re
import threading
import uuid
from datetime import timedelta

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from chat import services as chat_services
from chat import turns
from chat.models import Message
from completion import admission
from completion.engine import Refused
from tests.chat_helpers import CHAT_PATHS, send, start_chat, vendor_chat
from tests.opened import error_of
from tests.usage_helpers import price
from usage import ratelimits
from usage.models import (
    NO_KEY,
    ModelPrice,
    MonthlySpend,
    RateLimitOverride,
    Reservation,
    SpendCap,
    UsageConversationDaily,
    UsageDaily,
    UsageEvent,
)
from usage.prices import Price, TokenCounts, cost_micro, input_tokens_bound, worst_case_micro
from usage.services import budget_release, spend_cap_remove, spend_cap_set

pytestmark = pytest.mark.django_db

USAGE = {"input_tokens": 1200, "output_tokens": 345, "cached_tokens": 200}


def run(conversation, fake, preset="custom", **script):
    fake.script(path=CHAT_PATHS[preset], **script)
    _, reply = send(conversation, "How much will this cost?")
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    return reply


# --- costs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "model"),
    [("custom", "gpt-test"), ("anthropic", "claude-test"), ("gemini", "gemini-test")],
)
def test_each_protocols_usage_times_the_price_gives_the_exact_cost(
    alice, fake_provider, preset, model
):
    price(preset, model, input=3.0, output=15.0, cache_read=0.3)
    if preset == "custom":
        conversation, _ = start_chat(alice, fake_provider, model=model)
    else:
        conversation, _ = vendor_chat(alice, fake_provider, preset, model)
    reply = run(conversation, fake_provider, preset, text="A priced reply.", usage=USAGE)
    event = UsageEvent.objects.get(message_id=reply.pk)
    assert (event.input_tokens, event.output_tokens, event.cached_tokens) == (1200, 345, 200)
    # 1000 plain input at $3 + 200 cached at $0.30 + 345 output at $15, per million tokens.
    expected = (1000 * 3_000_000 + 200 * 300_000 + 345 * 15_000_000 + 500_000) // 1_000_000
    assert event.cost_micro == expected == 8235
    assert event.price_input == 3_000_000 and event.price_cache_read == 300_000


def test_cost_rounding_is_half_up_once_and_cache_writes_have_their_own_rate():
    p = Price(input=150_000, output=600_000, cache_read=75_000, cache_write=187_500)
    assert cost_micro(p, TokenCounts(input=3, output=1)) == 1  # 0.45 + 0.6 = 1.05 → 1
    assert cost_micro(p, TokenCounts(input=10, output=0, cache_write=10)) == 2  # 1.875 → 2
    no_cache_price = Price(input=1_000_000, output=0)
    assert cost_micro(no_cache_price, TokenCounts(input=10, output=0, cached=4)) == 10


def test_an_unknown_price_stays_unknown_never_zero(alice_client, alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider, model="mystery-model")
    reply = run(conversation, fake_provider, text="Unpriced.", usage=USAGE)
    event = UsageEvent.objects.get(message_id=reply.pk)
    assert event.cost_micro is None and event.price_input is None
    daily = UsageDaily.objects.get(owner=alice)
    assert daily.unpriced_turns == 1 and daily.cost_micro == 0
    html = alice_client.get(reverse("usage:home")).content.decode()
    assert "price unknown" in html
    # Unknown is never $0: every table and total of this period says "—", never "$0.00".
    assert "$0.00" not in html
    assert '— <span class="badge warn cost-note">price unknown</span>' in html
    day = alice_client.get(reverse("usage:day", args=[timezone.localdate().isoformat()]))
    assert '— <span class="small muted cost-note">price unknown</span>' in day.content.decode()
    assert "$0.00" not in day.content.decode()


def test_a_total_with_some_turns_of_unknown_price_says_how_many(alice_client, alice, fake_provider):
    price("custom", "gpt-test", input=10.0, output=10.0)
    known, _ = start_chat(alice, fake_provider)
    run(known, fake_provider, text="Priced.", usage=USAGE)
    unknown, _ = start_chat(alice, fake_provider, model="mystery-model", label="Other")
    run(unknown, fake_provider, text="Unpriced.", usage=USAGE)
    html = alice_client.get(reverse("usage:home")).content.decode()
    assert re.search(
        r'\$0\.\d+ <span class="small muted cost-note">\+ 1 turn of unknown price</span>', html
    )
    home = alice_client.get(reverse("home")).content.decode()
    assert "+ 1 turn of unknown price" in home


@pytest.mark.parametrize(
    ("cost", "turns", "unpriced", "shown"),
    [
        (0, 2, 2, ("—", "price unknown")),
        (None, 1, 1, ("—", "price unknown")),
        (1_600, 3, 1, ("$0.0016", "+ 1 turn of unknown price")),
        (2_000_000, 5, 2, ("$2.00", "+ 2 turns of unknown price")),
        (0, 4, 0, ("$0.00", "")),  # priced turns that cost nothing (the demo provider)
    ],
)
def test_cost_summary_never_shows_unknown_as_zero(cost, turns, unpriced, shown):
    from usage.services import cost_summary

    assert cost_summary(cost, turns=turns, unpriced_turns=unpriced) == shown


def test_operator_price_changes_apply_to_new_turns_only(alice, fake_provider):
    price("custom", "gpt-test", input=1.0, output=1.0, cache_read=None)
    conversation, _ = start_chat(alice, fake_provider)
    first = run(conversation, fake_provider, usage={"input_tokens": 1_000_000, "output_tokens": 0})
    price("custom", "gpt-test", input=2.0, output=1.0, cache_read=None)
    second = run(conversation, fake_provider, usage={"input_tokens": 1_000_000, "output_tokens": 0})
    costs = [UsageEvent.objects.get(message_id=m.pk).cost_micro for m in (first, second)]
    assert costs == [1_000_000, 2_000_000]


def test_the_shipped_price_list_is_loaded_and_overrides_survive_a_reload(db):
    from usage.prices import load_shipped_prices

    load_shipped_prices()  # transactional tests flush what the data migration loaded
    assert ModelPrice.objects.filter(preset="openai", model="gpt-4o-mini").exists()
    row = ModelPrice.objects.get(preset="openai", model="gpt-4o-mini")
    ModelPrice.objects.filter(pk=row.pk).update(input_per_mtok=1, overridden=True)
    load_shipped_prices()
    assert ModelPrice.objects.get(pk=row.pk).input_per_mtok == 1


# --- recording once, rollups, reconcile -----------------------------------------------------


def test_a_turn_is_recorded_once_with_its_rollups(alice, fake_provider):
    price("custom", "gpt-test")
    conversation, key = start_chat(alice, fake_provider)
    reply = run(conversation, fake_provider, usage=USAGE)
    turns.run_turn(str(reply.pk))  # a duplicate delivery
    assert UsageEvent.objects.filter(message_id=reply.pk).count() == 1
    daily = UsageDaily.objects.get(owner=alice)
    assert (daily.turns, daily.input_tokens, daily.key_id, daily.key_label) == (
        1,
        1200,
        key.pk,
        key.label,
    )
    assert UsageConversationDaily.objects.get(owner=alice).conversation_id == conversation.pk


@pytest.mark.django_db(transaction=True)
def test_a_finished_turn_writes_in_two_transactions_without_savepoints(alice, fake_provider):
    """What a worker writes per turn, once the day's rows exist: the claim, one transaction
    for the outcome with its usage, one for the key's last use; releasing a reservation the
    turn never made is a read. Fewer write transactions is less queueing for SQLite's one
    writer (and fewer round trips on PostgreSQL)."""
    price("custom", "gpt-test")
    conversation, _ = start_chat(alice, fake_provider)
    run(conversation, fake_provider, usage=USAGE)  # creates the day's rollup rows
    fake_provider.script(path=CHAT_PATHS["custom"], usage=USAGE)
    _, reply = send(conversation, "And this one?")
    with CaptureQueriesContext(connection) as queries:
        turns.run_turn(str(reply.pk))
    sql = [query["sql"] for query in queries.captured_queries]
    statements = [text.split()[0].upper() for text in sql]
    assert "SAVEPOINT" not in statements, statements
    if connection.vendor == "sqlite":
        assert statements.count("BEGIN") == 2, statements  # outcome + usage; key use
        assert statements[-2:] == ["COMMIT", "SELECT"], statements
    # The reservation check comes last and is a plain read (no lock, no transaction).
    assert "usage_reservation" in sql[-1] and "FOR UPDATE" not in sql[-1].upper(), sql[-1]
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE
    assert UsageEvent.objects.filter(message_id=reply.pk).count() == 1


def test_releasing_a_turn_that_holds_nothing_is_one_read(db):
    with CaptureQueriesContext(connection) as queries:
        budget_release(message_id=uuid.uuid4())
    assert [query["sql"].split()[0] for query in queries.captured_queries] == ["SELECT"]


def test_failed_and_stopped_turns_are_recorded_too(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    failed = run(conversation, fake_provider, error="invalid_key")
    assert UsageEvent.objects.get(message_id=failed.pk).status == "error"
    _, queued = send(conversation)
    chat_services.turn_cancel(message=queued)
    assert UsageEvent.objects.get(message_id=queued.pk).status == "stopped"
    assert UsageDaily.objects.get(owner=alice).errors == 1


def test_reconcile_finds_nothing_after_mixed_turns_and_repairs_a_corrupted_rollup(
    alice, bob, fake_provider, capsys
):
    price("custom", "gpt-test")
    for user in (alice, bob):
        conversation, _ = start_chat(user, fake_provider, label=f"k-{user.pk}")
        run(conversation, fake_provider, usage=USAGE)
        run(conversation, fake_provider, error="rate_limited", retry_after=60)
        run(conversation, fake_provider, text="partial text here", drop_after_tokens=2)
    call_command("usage_reconcile", "--check")
    assert "Rollups match 6 usage events" in capsys.readouterr().out
    UsageDaily.objects.filter(owner=alice).update(turns=99, cost_micro=1)
    UsageConversationDaily.objects.filter(owner=bob).delete()
    with pytest.raises(SystemExit):
        call_command("usage_reconcile", "--check")
    call_command("usage_reconcile")
    assert "repaired" in capsys.readouterr().out
    call_command("usage_reconcile", "--check")
    assert UsageDaily.objects.get(owner=alice).turns == 3


# --- spend caps ------------------------------------------------------------------------------


def test_a_cap_refuses_a_turn_that_could_pass_it_naming_the_cap_and_its_reset(
    alice, fake_provider, settings
):
    price("custom", "gpt-test", input=10.0, output=10.0)
    settings.BYOK_MAX_OUTPUT_TOKENS = 1000
    conversation, _ = start_chat(alice, fake_provider)
    # $0.002 affords under 256 output tokens at $10/M: too short a reply to be worth a call.
    spend_cap_set(owner=alice, key_id=None, limit_micro=2_000)
    reply = run(conversation, fake_provider)
    assert reply.status == Message.Status.ERROR
    assert reply.error_kind == "budget"
    assert "monthly spend cap ($0.0020)" in error_of(reply)
    assert "resets on 1 " in error_of(reply)
    assert error_of(reply).endswith("or wait.")  # the page's link, not the word "usage"
    assert [r for r in fake_provider.requests if r.method == "POST"] == []
    assert not Reservation.objects.exists()
    assert MonthlySpend.objects.get(owner=alice, key_id=NO_KEY).reserved_micro == 0


def test_a_twenty_dollar_cap_is_never_overrun_by_a_long_message(alice, fake_provider, settings):
    """Found in testing: a $20 cap, one 30,000-character message the provider counted as
    30,000 input tokens, and $30.01 spent — the reservation guessed three characters a token.
    The reservation is now an upper bound (UTF-8 bytes), so the turn is refused unsent."""
    price("custom", "gpt-test", input=1000.0, output=1000.0)
    settings.BYOK_MAX_OUTPUT_TOKENS = 10
    conversation, _ = start_chat(alice, fake_provider)
    spend_cap_set(owner=alice, key_id=None, limit_micro=20_000_000)
    fake_provider.script(
        path=CHAT_PATHS["custom"], usage={"input_tokens": 30_000, "output_tokens": 10}
    )
    _, reply = send(conversation, "a" * 30_000)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.ERROR and reply.error_kind == "budget"
    assert [r for r in fake_provider.requests if r.method == "POST"] == []
    ledger = MonthlySpend.objects.get(owner=alice, key_id=NO_KEY)
    assert (ledger.spent_micro, ledger.reserved_micro) == (0, 0)


def test_whatever_the_provider_counts_up_to_the_bound_the_spend_stays_under_the_cap(
    alice, fake_provider, settings
):
    """The provider counts every byte as a token (the worst a tokenizer can do) and writes
    the longest reply allowed: the month's spend still ends at or under the cap."""
    price("custom", "gpt-test", input=1000.0, output=1000.0)
    settings.BYOK_MAX_OUTPUT_TOKENS = 4096
    conversation, _ = start_chat(alice, fake_provider)
    spend_cap_set(owner=alice, key_id=None, limit_micro=20_000_000)
    text = "é🙂a" * 2_000  # 14,000 bytes in 6,000 characters
    for _ in range(3):
        fake_provider.script(path=CHAT_PATHS["custom"], usage={"input_tokens": 14_000})
        _, reply = send(conversation, text)
        turns.run_turn(str(reply.pk))
        reply.refresh_from_db()
        if reply.status == Message.Status.ERROR:
            break
        sent = [r for r in fake_provider.requests if r.method == "POST"][-1]
        # The provider then bills the longest reply it was allowed.
        ledger = MonthlySpend.objects.get(owner=alice, key_id=NO_KEY)
        assert ledger.spent_micro <= 20_000_000
        assert sent.body["max_tokens"] <= 4096
    ledger = MonthlySpend.objects.get(owner=alice, key_id=NO_KEY)
    assert ledger.spent_micro <= 20_000_000 and ledger.reserved_micro == 0


def test_the_output_limit_sent_is_what_the_cap_affords(alice, fake_provider, settings):
    price("custom", "gpt-test", input=1.0, output=10.0, cache_read=None)
    settings.BYOK_MAX_OUTPUT_TOKENS = 4096
    conversation, _ = start_chat(alice, fake_provider)
    spend_cap_set(owner=alice, key_id=None, limit_micro=10_000)  # $0.01
    reply = run(conversation, fake_provider, usage={"input_tokens": 20, "output_tokens": 50})
    assert reply.status == Message.Status.DONE
    (sent,) = [r for r in fake_provider.requests if r.method == "POST"]
    bound = input_tokens_bound(["How much will this cost?"])
    # $0.01 less the input's worst case, at $10 per million output tokens.
    assert sent.body["max_tokens"] == (10_000 * 1_000_000 - bound * 1_000_000) // 10_000_000
    assert f"at most {sent.body['max_tokens']:,} tokens long" in reply.notice
    assert (
        worst_case_micro(
            Price(input=1_000_000, output=10_000_000),
            input_tokens=bound,
            max_output_tokens=sent.body["max_tokens"],
        )
        <= 10_000
    )


@pytest.mark.parametrize(
    "texts",
    [["hello"], ["é" * 100], ["🙂" * 50, "system prompt"], ["", "a b c"], ["日本語のテキスト"]],
)
def test_the_input_bound_is_at_least_the_utf8_bytes_plus_framing(texts):
    assert input_tokens_bound(texts) >= sum(len(t.encode()) for t in texts) + len(texts)


def test_a_turn_reserves_then_settles_at_the_real_cost(alice, fake_provider, settings):
    price("custom", "gpt-test", input=1.0, output=1.0, cache_read=None)
    settings.BYOK_MAX_OUTPUT_TOKENS = 100
    conversation, key = start_chat(alice, fake_provider)
    spend_cap_set(owner=alice, key_id=key.pk, limit_micro=1_000_000)
    run(conversation, fake_provider, usage={"input_tokens": 50_000, "output_tokens": 25_000})
    ledger = MonthlySpend.objects.get(owner=alice, key_id=key.pk)
    assert (ledger.spent_micro, ledger.reserved_micro) == (75_000, 0)
    assert not Reservation.objects.exists()


def test_a_failed_call_releases_its_reservation(alice, fake_provider):
    price("custom", "gpt-test")
    conversation, _ = start_chat(alice, fake_provider)
    spend_cap_set(owner=alice, key_id=None, limit_micro=10_000_000)
    run(conversation, fake_provider, error="invalid_key")
    ledger = MonthlySpend.objects.get(owner=alice, key_id=NO_KEY)
    assert (ledger.spent_micro, ledger.reserved_micro) == (0, 0)


def test_an_unknown_price_is_refused_under_a_cap_unless_allowed(alice, fake_provider):
    from usage.services import usage_settings_set

    conversation, _ = start_chat(alice, fake_provider, model="mystery")
    spend_cap_set(owner=alice, key_id=None, limit_micro=10_000_000)
    refused = run(conversation, fake_provider)
    assert refused.error_kind == "budget" and "does not know the price of mystery" in error_of(
        refused
    )
    usage_settings_set(owner=alice, allow_unknown_prices=True)
    assert run(conversation, fake_provider).status == Message.Status.DONE


def test_a_used_up_cap_refuses_at_send_time(alice, fake_provider):
    price("custom", "gpt-test")
    conversation, _ = start_chat(alice, fake_provider)
    spend_cap_set(owner=alice, key_id=None, limit_micro=1_000)
    month = timezone.localdate().replace(day=1)
    MonthlySpend.objects.filter(owner=alice, key_id=NO_KEY, month=month).update(spent_micro=1_000)
    with pytest.raises(chat_services.ChatError, match="you have reached your monthly spend cap"):
        send(conversation)
    assert not Message.objects.exists()


def test_80_percent_of_a_cap_sends_one_email_and_shows_a_banner(
    alice_client, alice, fake_provider, django_capture_on_commit_callbacks
):
    price("custom", "gpt-test", input=1.0, output=1.0, cache_read=None)
    conversation, _ = start_chat(alice, fake_provider)
    spend_cap_set(owner=alice, key_id=None, limit_micro=10_000)
    from byok_site.celery import app

    app.conf.task_always_eager = True
    try:
        with django_capture_on_commit_callbacks(execute=True):
            run(conversation, fake_provider, usage={"input_tokens": 4_000, "output_tokens": 4_500})
            # The $0.0015 left affords a shorter reply: it runs (up to 1,000 tokens, usage
            # reported 10 here), and sends no second e-mail.
            second = run(conversation, fake_provider, usage={"input_tokens": 5, "output_tokens": 5})
            assert second.status == Message.Status.DONE and "at most" in second.notice
    finally:
        app.conf.task_always_eager = False
    warnings = [m for m in mail.outbox if "80%" in m.subject]
    assert len(warnings) == 1
    assert "$0.0085 of your monthly spend cap ($0.01)" in warnings[0].body
    assert MonthlySpend.objects.get(owner=alice, key_id=NO_KEY).spent_micro == 8_510
    assert "used 85%" in alice_client.get(reverse("usage:home")).content.decode()
    # Where the user sends, too: the home page and the conversation (its key's caps).
    assert "used 85%" in alice_client.get(reverse("home")).content.decode()
    page = reverse("chat:conversation", args=[conversation.pk])
    assert "used 85% of your monthly spend cap" in alice_client.get(page).content.decode()


def test_a_conversation_shows_only_the_caps_its_turns_are_held_to(
    alice_client, alice, fake_provider
):
    from tests.keys_helpers import add_key

    conversation, _ = start_chat(alice, fake_provider)
    other = add_key(alice, fake_provider, label="Other key")
    spend_cap_set(owner=alice, key_id=other.pk, limit_micro=10_000)
    month = timezone.localdate().replace(day=1)
    MonthlySpend.objects.filter(owner=alice, key_id=other.pk, month=month).update(spent_micro=9_000)
    page = reverse("chat:conversation", args=[conversation.pk])
    assert "used 90%" not in alice_client.get(page).content.decode()
    assert "used 90% of a key's monthly cap" in alice_client.get(reverse("home")).content.decode()


@pytest.mark.django_db(transaction=True)
def test_fifty_turns_at_once_never_run_past_a_cap_that_allows_ten(alice, fake_provider, settings):
    # SQLite runs the same code serially (IMMEDIATE transactions); the race needs PostgreSQL.
    threads_count = 10 if connection.vendor == "sqlite" else 50
    settings.BYOK_MAX_OUTPUT_TOKENS = 100
    settings.BYOK_MAX_CONCURRENT_TURNS = 100
    settings.BYOK_RATE_TURNS_PER_MINUTE = 1000
    price("custom", "gpt-test", input=0.0, output=10.0, cache_read=None)  # worst case 1000 µ$
    spend_cap_set(owner=alice, key_id=None, limit_micro=10_000 if threads_count == 50 else 2_000)
    replies = []
    for index in range(threads_count):
        conversation, _ = start_chat(alice, fake_provider, label=f"k{index}")
        replies.append(send(conversation)[1])
    for _ in replies:
        fake_provider.script(
            path="/chat/completions", text="ok", usage={"input_tokens": 0, "output_tokens": 100}
        )
    barrier = threading.Barrier(len(replies))

    def worker(message_id):
        barrier.wait()
        try:
            turns.run_turn(str(message_id))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(r.pk,)) for r in replies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = Message.objects.filter(role="assistant", status="done").count()
    allowed = 10 if threads_count == 50 else 2
    assert done <= allowed
    assert (
        Message.objects.filter(status="error", error_kind="budget").count() == threads_count - done
    )
    ledger = MonthlySpend.objects.get(owner=alice, key_id=NO_KEY)
    assert ledger.spent_micro <= SpendCap.objects.get(owner=alice).limit_micro
    assert ledger.reserved_micro == 0


# --- rate limits -------------------------------------------------------------------------------


def test_turns_per_minute_are_limited_and_say_when_to_retry(alice, fake_provider, settings):
    settings.BYOK_RATE_TURNS_PER_MINUTE = 2
    conversation, _ = start_chat(alice, fake_provider)
    for _ in range(2):
        run(conversation, fake_provider)
    with pytest.raises(chat_services.ChatError, match=r"You can send again in \d+ seconds"):
        send(conversation)


def test_sends_refused_for_another_reason_do_not_count_against_the_minute(
    alice, fake_provider, settings
):
    settings.BYOK_RATE_TURNS_PER_MINUTE = 3
    settings.BYOK_MAX_CONCURRENT_TURNS = 1
    first, _ = start_chat(alice, fake_provider)
    second, _ = start_chat(alice, fake_provider, label="Second key")
    _, waiting = send(first)  # queued: it holds the one slot
    for _ in range(10):
        with pytest.raises(chat_services.ChatError, match="replies being written at once"):
            send(second)
        with pytest.raises(chat_services.ChatError, match="still being written"):
            send(first)
    with pytest.raises(chat_services.ChatError, match="Type a message first"):
        send(second, "   ")
    spend_cap_set(owner=alice, key_id=None, limit_micro=1)
    MonthlySpend.objects.filter(owner=alice).update(spent_micro=1)
    for _ in range(5):
        with pytest.raises(chat_services.ChatError, match="reached"):
            send(second)
    spend_cap_remove(owner=alice, key_id=None)
    fake_provider.script(path=CHAT_PATHS["custom"])
    turns.run_turn(str(waiting.pk))  # gives the slot back
    # One admitted so far: two more are, and only the one after them is refused for the rate.
    assert run(second, fake_provider).status == Message.Status.DONE
    assert run(second, fake_provider).status == Message.Status.DONE
    with pytest.raises(chat_services.ChatError, match="You have sent 3 messages in the last"):
        send(second)


def test_a_turn_not_queued_after_admission_gives_its_minute_back(alice, settings):
    settings.BYOK_RATE_TURNS_PER_MINUTE = 1
    call_id = uuid.uuid4()
    admission.admit(owner=alice, call_id=call_id, key_id=None, key_label="")
    admission.release(owner=alice, call_id=call_id)
    admission.admit(owner=alice, call_id=uuid.uuid4(), key_id=None, key_label="")
    with pytest.raises(Refused, match="You have sent 1 messages"):
        admission.admit(owner=alice, call_id=uuid.uuid4(), key_id=None, key_label="")


def test_the_minute_limit_holds_under_concurrency(alice, settings):
    settings.BYOK_MAX_CONCURRENT_TURNS = 1000
    settings.BYOK_RATE_TURNS_PER_MINUTE = 3
    admitted, refused = [], []
    barrier = threading.Barrier(20)

    def attempt(index):
        barrier.wait()
        try:
            ratelimits.turn_admit(user=alice, message_id=f"m{index}")
            admitted.append(index)
        except ratelimits.RateLimited as error:
            refused.append(error.message)
        finally:
            connection.close()  # give a pooled connection back (PostgreSQL)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 3 and len(refused) == 17
    assert all("messages in the last minute" in message for message in refused)
    assert ratelimits.running_turns(user_id=alice.pk) == 3  # the refused gave their slots back


def test_an_operator_override_raises_one_users_limit(alice, fake_provider, settings):
    settings.BYOK_RATE_TURNS_PER_MINUTE = 1
    RateLimitOverride.objects.create(user=alice, turns_per_minute=3)
    conversation, _ = start_chat(alice, fake_provider)
    for _ in range(3):
        run(conversation, fake_provider)


def test_the_concurrent_turn_limit_holds_under_concurrency(alice, settings):
    settings.BYOK_MAX_CONCURRENT_TURNS = 3
    settings.BYOK_RATE_TURNS_PER_MINUTE = 1000
    admitted, refused = [], []
    barrier = threading.Barrier(20)

    def attempt(index):
        barrier.wait()
        try:
            ratelimits.turn_admit(user=alice, message_id=f"m{index}")
            admitted.append(index)
        except ratelimits.RateLimited:
            refused.append(index)
        finally:
            connection.close()  # give a pooled connection back (PostgreSQL)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 3 and len(refused) == 17
    ratelimits.turn_release(user_id=alice.pk, message_id=f"m{admitted[0]}")
    ratelimits.turn_admit(user=alice, message_id="another")


def test_finished_turns_give_their_slot_back(alice, fake_provider, settings):
    settings.BYOK_MAX_CONCURRENT_TURNS = 1
    conversation, _ = start_chat(alice, fake_provider)
    for _ in range(3):
        assert run(conversation, fake_provider).status == Message.Status.DONE


# --- pages ---------------------------------------------------------------------------------------


def test_the_usage_page_shows_totals_chart_and_tables(alice_client, alice, fake_provider):
    price("custom", "gpt-test")
    conversation, key = start_chat(alice, fake_provider)
    run(conversation, fake_provider, usage=USAGE)
    html = alice_client.get(reverse("usage:home")).content.decode()
    assert "$0.0082" in html  # 8235 µ$
    assert "<svg" in html and "gpt-test" in html
    assert key.label in html
    assert "How much will this cost?" in html  # the conversation's title, opened for its owner
    assert "1,200" in html


def test_usage_pages_never_show_another_users_numbers(client, alice, bob, fake_provider):
    price("custom", "gpt-test")
    conversation, key = start_chat(alice, fake_provider, label="Alices key")
    reply = run(conversation, fake_provider, usage=USAGE)
    client.force_login(bob)
    html = client.get(reverse("usage:home")).content.decode()
    assert "Alices key" not in html and "No usage in this period" in html
    assert client.get(reverse("usage:key", args=[key.pk])).status_code == 404
    assert client.post(reverse("usage:cap_set", args=[key.pk]), {"limit": "5"}).status_code == 404
    export = client.get(reverse("usage:export"))
    assert str(reply.pk) not in b"".join(export.streaming_content).decode()
    day = timezone.localdate().isoformat()
    assert "gpt-test" not in client.get(reverse("usage:day", args=[day])).content.decode()


def test_usage_urls_need_an_account(client):
    for url in (reverse("usage:home"), reverse("usage:export"), reverse("usage:caps")):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"period": "custom", "start": "2026-03-01", "end": "2026-02-01"}, "start date is after"),
        ({"period": "custom", "start": "2099-01-01", "end": "2099-02-01"}, "in the future"),
        ({"period": "custom", "start": "2020-01-01", "end": "2026-01-01"}, "at most one year"),
        ({"period": "custom", "start": "junk", "end": ""}, "YYYY-MM-DD"),
    ],
)
def test_bad_periods_get_a_clear_message_not_a_500(alice_client, query, message):
    response = alice_client.get(reverse("usage:home"), query)
    assert response.status_code == 200
    assert message in response.content.decode()


def test_the_csv_export_streams_the_owners_rows(alice_client, alice, fake_provider):
    price("custom", "gpt-test")
    conversation, _ = start_chat(alice, fake_provider)
    reply = run(conversation, fake_provider, usage=USAGE)
    response = alice_client.get(reverse("usage:export"))
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][0] == "time (UTC)"
    assert rows[1][2] == "gpt-test" and rows[1][11] == "0.008235" and rows[1][-1] == str(reply.pk)


def test_the_day_drill_down_lists_that_days_turns(alice_client, alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    run(conversation, fake_provider, usage=USAGE)
    day = timezone.localdate()
    html = alice_client.get(reverse("usage:day", args=[day.isoformat()])).content.decode()
    assert "gpt-test" in html and "1,200" in html
    assert alice_client.get(reverse("usage:day", args=["not-a-date"])).status_code == 404
    yesterday = (day - timedelta(days=1)).isoformat()
    assert (
        "No turns that day"
        in alice_client.get(reverse("usage:day", args=[yesterday])).content.decode()
    )


def test_the_key_page_fragment_shows_its_own_usage(alice_client, alice, fake_provider):
    price("custom", "gpt-test")
    conversation, key = start_chat(alice, fake_provider)
    run(conversation, fake_provider, usage=USAGE)
    html = alice_client.get(reverse("usage:key", args=[key.pk])).content.decode()
    assert "Usage this month" in html and "$0.0082" in html


@pytest.mark.parametrize(
    ("limit", "error"),
    [
        ("0", "more than $0"),
        ("-5", "more than $0"),
        ("1e12", "at most"),
        ("abc", "Enter an amount"),
    ],
)
def test_bad_caps_are_refused_clearly(alice_client, alice, limit, error):
    response = alice_client.post(
        reverse("usage:cap_set", args=["all"]), {"limit": limit}, follow=True
    )
    assert error in response.content.decode()
    assert not SpendCap.objects.exists()


def test_raising_a_cap_is_deliberate(alice_client, alice):
    alice_client.post(reverse("usage:cap_set", args=["all"]), {"limit": "10"})
    assert SpendCap.objects.get(owner=alice).limit_micro == 10_000_000
    page = alice_client.post(reverse("usage:cap_set", args=["all"]), {"limit": "50"}, follow=True)
    assert "needs the “Yes, raise the cap” box ticked" in page.content.decode()
    assert SpendCap.objects.get(owner=alice).limit_micro == 10_000_000
    lowered = alice_client.post(reverse("usage:cap_set", args=["all"]), {"limit": "5"})
    assert lowered.status_code == 302
    assert SpendCap.objects.get(owner=alice).limit_micro == 5_000_000


def test_a_send_that_fails_after_admission_gives_its_slot_back(alice, fake_provider, monkeypatch):
    conversation, _ = start_chat(alice, fake_provider)

    def broken(reply):
        raise RuntimeError("the broker went away mid-send")

    monkeypatch.setattr(chat_services, "_enqueue_turn", broken)
    with pytest.raises(RuntimeError):
        send(conversation)
    assert ratelimits.running_turns(user_id=alice.pk) == 0
    assert not Message.objects.filter(conversation=conversation).exists()


def test_deleting_a_conversation_ends_its_queued_turn_and_frees_its_slot(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider)
    _, queued = send(conversation)
    assert ratelimits.running_turns(user_id=alice.pk) == 1
    chat_services.conversation_delete(conversation=conversation)
    assert ratelimits.running_turns(user_id=alice.pk) == 0
    assert UsageEvent.objects.get(message_id=queued.pk).status == "stopped"
