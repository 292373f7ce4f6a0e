"""The completion engine on its own: a sink of the test's, no chat at all, real HTTP to the
fake provider (two of them where a second server matters)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import connection

from accounts.models import AuditEvent
from completion import engine
from completion.engine import Call, KeyChoice, Outcome, Prompt, Refused
from keys.models import ProviderKey
from providers.types import ChatMessage, Role
from tests.fakes.provider import DEFAULT_REPLY, FakeProvider
from tests.keys_helpers import GOOD_SECRET, add_key
from tests.usage_helpers import price
from usage import ratelimits
from usage.models import MonthlySpend, Reservation, UsageEvent
from usage.prices import TokenCounts, price_for
from usage.services import budget_reserve, spend_cap_set
from vault.models import DataKey
from vault.services import OwnerCipher

pytestmark = pytest.mark.django_db

CHAT = "/chat/completions"


class MemorySink:
    """A surface of the test's: the call's row is a status in memory."""

    def __init__(
        self,
        call: Call,
        *,
        text: str = "Hello",
        prompt_error: Exception | None = None,
        open_status: str = "running",
    ):
        self.call = call
        self.status = "queued"
        self.open_status = open_status  # the web stores only what is still queued
        self.lock = threading.Lock()
        self.deltas: list[str] = []
        self.checkpoints: list[str] = []
        self.stored: list[Outcome] = []
        self.published_outcomes: list[Outcome] = []
        self.text = text
        self.prompt_error = prompt_error

    def claim(self) -> Call | None:
        with self.lock:
            if self.status != "queued":
                return None
            self.status = "running"
        return self.call

    def prompt(self, cipher: OwnerCipher) -> Prompt:
        if self.prompt_error is not None:
            raise self.prompt_error
        return Prompt(messages=[ChatMessage(Role.USER, self.text)], system_prompt="Be brief.")

    def delta(self, text: str) -> None:
        self.deltas.append(text)

    def checkpoint(self, text: str, tokens: TokenCounts, cipher: OwnerCipher) -> None:
        self.checkpoints.append(text)

    def store(self, outcome: Outcome, cipher: OwnerCipher | None) -> bool:
        with self.lock:
            if self.status != self.open_status:
                return False
            self.status = outcome.status
        self.stored.append(outcome)
        return True

    def published(self, outcome: Outcome, cipher: OwnerCipher | None) -> None:
        self.published_outcomes.append(outcome)

    @property
    def outcome(self) -> Outcome:
        assert len(self.stored) == 1, self.stored
        return self.stored[0]


def call_for(owner, key: ProviderKey, *, model: str = "gpt-test") -> Call:
    return Call(
        call_id=uuid.uuid4(),
        owner=owner,
        choice=KeyChoice(preset=key.preset, base_url=key.base_url, key_id=key.pk),
        model=model,
        max_output_tokens=256,
    )


def chat_requests(fake: FakeProvider) -> list:
    return [request for request in fake.requests if request.path.endswith(CHAT)]


def test_a_call_streams_to_the_sink_and_is_recorded_once(alice, fake_provider):
    key = add_key(alice, fake_provider)
    sink = MemorySink(call_for(alice, key))
    engine.run(sink)
    engine.run(sink)  # a redelivery: the claim is taken, nobody is called again
    outcome = sink.outcome
    assert outcome.status == "done"
    assert "".join(sink.deltas) == outcome.text == DEFAULT_REPLY
    assert sink.published_outcomes == [outcome]
    assert len(chat_requests(fake_provider)) == 1
    sent = chat_requests(fake_provider)[0].body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    event = UsageEvent.objects.get(message_id=sink.call.call_id)
    assert (event.key_id, event.status, event.tokens_estimated) == (key.pk, "done", False)
    assert outcome.tokens is not None
    assert event.input_tokens == outcome.tokens.input > 0
    key.refresh_from_db()
    assert key.last_used_at is not None
    assert AuditEvent.objects.get(owner=alice, action=AuditEvent.Action.KEY_USED).count == 1


def test_a_failing_key_falls_back_only_to_keys_of_the_same_server(alice, fake_provider):
    with FakeProvider("127.0.0.1", 0) as other_server:
        chosen = add_key(alice, fake_provider, label="Chosen")
        elsewhere = add_key(alice, other_server, label="Elsewhere")
        same_server = add_key(alice, fake_provider, label="Same server")
        fake_provider.script(error="invalid_key", path=CHAT)  # the chosen key is refused
        sink = MemorySink(call_for(alice, chosen))
        engine.run(sink)
        outcome = sink.outcome
        assert outcome.status == "done"
        assert outcome.key == same_server
        assert "“Chosen” failed" in " ".join(outcome.notices)
        assert other_server.requests == []  # SECURITY: never another server
        assert elsewhere.pk != outcome.key.pk
        chosen.refresh_from_db()
        assert chosen.status == ProviderKey.Status.INVALID


def test_with_no_usable_key_on_its_server_the_call_goes_nowhere_else(alice, fake_provider):
    with FakeProvider("127.0.0.1", 0) as other_server:
        chosen = add_key(alice, fake_provider, label="Chosen")
        add_key(alice, other_server, label="Elsewhere")
        ProviderKey.objects.filter(pk=chosen.pk).update(status=ProviderKey.Status.REVOKED)
        sink = MemorySink(call_for(alice, chosen))
        engine.run(sink)
        assert sink.outcome.error_kind == "no_key"
        assert other_server.requests == []
        assert chat_requests(fake_provider) == []
    assert UsageEvent.objects.get(message_id=sink.call.call_id).status == "error"


def test_a_rate_limited_provider_is_retried_before_the_first_token(alice, fake_provider):
    key = add_key(alice, fake_provider)
    fake_provider.script(error="rate_limited", retry_after=0, path=CHAT)
    sink = MemorySink(call_for(alice, key))
    engine.run(sink)
    assert sink.outcome.status == "done"
    assert sink.outcome.provider_calls == 2
    assert len(chat_requests(fake_provider)) == 2


def test_the_cap_is_reserved_then_settled_at_the_real_cost(alice, fake_provider):
    key = add_key(alice, fake_provider)
    price("custom", "gpt-test", input=1.0, output=2.0, cache_read=None)
    spend_cap_set(owner=alice, key_id=None, limit_micro=1_000_000)
    fake_provider.script(path=CHAT, usage={"input_tokens": 1000, "output_tokens": 500})
    sink = MemorySink(call_for(alice, key))
    engine.run(sink)
    event = UsageEvent.objects.get(message_id=sink.call.call_id)
    assert event.cost_micro == 1000 * 1 + 500 * 2
    ledger = MonthlySpend.objects.get(owner=alice)
    assert (ledger.spent_micro, ledger.reserved_micro) == (event.cost_micro, 0)
    assert not Reservation.objects.exists()


def test_a_used_up_cap_refuses_before_any_call_and_holds_nothing(alice, fake_provider):
    key = add_key(alice, fake_provider)
    price("custom", "gpt-test")
    spend_cap_set(owner=alice, key_id=None, limit_micro=10)  # less than any reply costs
    sink = MemorySink(call_for(alice, key))
    engine.run(sink)
    assert sink.outcome.error_kind == "budget"
    assert "monthly spend cap" in sink.outcome.error_message
    assert chat_requests(fake_provider) == []
    assert MonthlySpend.objects.get(owner=alice).reserved_micro == 0


@pytest.mark.django_db(transaction=True)
def test_stop_ends_the_call_keeping_the_text_so_far(alice, fake_provider):
    key = add_key(alice, fake_provider)
    fake_provider.script(text=" ".join(["slow"] * 400), tokens_per_second=20, path=CHAT)
    sink = MemorySink(call_for(alice, key))

    def run_in_a_worker_thread() -> None:
        try:
            engine.run(sink)
        finally:
            connection.close()

    running = threading.Thread(target=run_in_a_worker_thread)
    running.start()
    deadline = time.monotonic() + 30
    while not sink.deltas and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.request_cancel(sink.call.call_id)
    running.join(timeout=30)
    outcome = sink.outcome
    assert outcome.status == "stopped"
    assert outcome.text.startswith("slow") and len(outcome.text.split()) < 400
    assert outcome.estimated  # the provider never reported usage for the cut-off stream
    # About four characters a token, both ways: "Hello" and "Be brief." are 14 characters.
    assert outcome.tokens is not None
    assert (outcome.tokens.input, outcome.tokens.output) == (3, len(outcome.text) // 4)
    event = UsageEvent.objects.get(message_id=sink.call.call_id)
    assert (event.status, event.tokens_estimated) == ("stopped", True)


def test_a_sink_that_fails_still_ends_the_call_once_and_frees_its_slot(alice, fake_provider):
    key = add_key(alice, fake_provider)
    sink = MemorySink(call_for(alice, key), prompt_error=RuntimeError("a bug"))
    ratelimits.turn_admit(user=alice, message_id=sink.call.call_id)
    engine.run(sink)
    assert sink.outcome.error_kind == "internal"
    assert chat_requests(fake_provider) == []
    assert UsageEvent.objects.filter(message_id=sink.call.call_id).count() == 1
    assert ratelimits.running_turns(user_id=alice.pk) == 0


def test_a_prompt_the_sink_refuses_is_an_error_with_its_words(alice, fake_provider):
    key = add_key(alice, fake_provider)
    sink = MemorySink(call_for(alice, key), prompt_error=Refused("bad_request", "Nothing here."))
    engine.run(sink)
    assert (sink.outcome.error_kind, sink.outcome.error_message) == ("bad_request", "Nothing here.")


def test_the_key_is_opened_only_for_the_call(alice, fake_provider):
    key = add_key(alice, fake_provider)
    sink = MemorySink(call_for(alice, key))
    engine.run(sink)
    (request,) = chat_requests(fake_provider)
    assert request.headers["authorization"] == f"Bearer {GOOD_SECRET}"
    outcome = sink.outcome
    assert GOOD_SECRET not in repr(outcome) and GOOD_SECRET not in repr(sink.call)


def test_an_ending_that_finds_the_call_taken_gives_back_nothing(alice, fake_provider):
    # The web read a turn as queued; meanwhile a worker claimed it and reserved under the cap.
    key = add_key(alice, fake_provider)
    price("custom", "gpt-test")
    spend_cap_set(owner=alice, key_id=None, limit_micro=10_000_000)
    sink = MemorySink(call_for(alice, key))
    ratelimits.turn_admit(user=alice, message_id=sink.call.call_id)
    assert sink.claim() is not None  # the worker's
    budget_reserve(
        owner=alice,
        message_id=sink.call.call_id,
        key_id=key.pk,
        key_label=key.label,
        model="gpt-test",
        price=price_for("custom", "gpt-test"),
        input_tokens_bound=100,
        max_output_tokens=256,
    )
    web_side = MemorySink(sink.call, open_status="queued")
    web_side.status = "running"  # what the web finds: not queued any more
    assert engine.close(sink.call, web_side, Outcome(status="stopped")) is False
    assert Reservation.objects.filter(message_id=sink.call.call_id).exists()
    assert ratelimits.running_turns(user_id=alice.pk) == 1
    assert not UsageEvent.objects.filter(message_id=sink.call.call_id).exists()


def test_an_ending_without_text_needs_no_data_key(alice, fake_provider):
    # The reaper ends turns of users whose data key may not open (a retired master key).
    key = add_key(alice, fake_provider)
    DataKey.objects.filter(owner=alice).update(wrapped=b"\x01broken")
    sink = MemorySink(call_for(alice, key))
    sink.status = "running"
    assert engine.close(sink.call, sink, Outcome(status="error", error_kind="worker_lost"))
    assert UsageEvent.objects.get(message_id=sink.call.call_id).error_kind == "worker_lost"


def test_a_key_that_will_not_open_is_marked_so_on_the_keys_page(alice, fake_provider):
    key = add_key(alice, fake_provider)
    ProviderKey.objects.filter(pk=key.pk).update(sealed_secret=b"\x01" + b"x" * 40)
    sink = MemorySink(call_for(alice, key))
    engine.run(sink)
    assert sink.outcome.error_kind == "invalid_key"
    assert chat_requests(fake_provider) == []
    key.refresh_from_db()
    assert key.status == ProviderKey.Status.INVALID
    assert "could not be decrypted" in key.status_reason


def test_a_custom_server_nobody_knows_any_more_is_no_usable_key(alice, fake_provider):
    key = add_key(alice, fake_provider)
    call = Call(
        call_id=uuid.uuid4(),
        owner=alice,
        choice=KeyChoice(preset="custom", base_url=None, key_id=None),  # its key was deleted
        model="gpt-test",
        max_output_tokens=256,
    )
    sink = MemorySink(call)
    engine.run(sink)
    assert sink.outcome.error_kind == "no_key"
    assert chat_requests(fake_provider) == []
    assert key.pk  # the owner's other custom key (another server, maybe) is never tried
