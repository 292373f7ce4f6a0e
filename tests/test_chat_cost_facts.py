"""A reply's small print shows what it cost, from the usage ledger: dollars when its model
has a price, "≈" when its tokens were estimated, "price unknown" (never $0.00) without one."""

from __future__ import annotations

import pytest

from chat import turns
from chat.models import Message
from chat.selectors import conversation_branch
from tests.chat_helpers import read_stream, send, start_chat, wait_final
from tests.opened import error_of
from tests.usage_helpers import price
from usage.models import UsageEvent
from usage.services import format_cost

pytestmark = pytest.mark.django_db

CHAT = "/chat/completions"


def small_print(conversation) -> str:
    conversation.refresh_from_db()
    return conversation_branch(conversation)[-1].facts["usage"]


def test_how_a_cost_reads():
    assert format_cost(3100) == "$0.0031"
    assert format_cost(3100, estimated=True) == "≈ $0.0031"
    assert format_cost(12_340_000) == "$12.34"
    assert format_cost(None) == "price unknown"
    assert format_cost(None, estimated=True) == "price unknown"
    assert format_cost(0) == "$0.00"  # a known price of nothing: free, not unknown


def test_a_priced_reply_shows_its_cost_from_the_ledger(alice, fake_provider):
    price("custom", "gpt-test", input=3.0, output=15.0, cache_read=None)
    conversation, _ = start_chat(alice, fake_provider)
    fake_provider.script(
        text="Priced.", usage={"input_tokens": 412, "output_tokens": 230}, path=CHAT
    )
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.status == Message.Status.DONE, error_of(reply)
    # 412 at $3/M plus 230 at $15/M: $0.004686
    assert UsageEvent.objects.get(message_id=reply.pk).cost_micro == 4686
    assert (
        small_print(conversation) == f"412 in · 230 out · $0.0047 · first token {reply.ttft_ms} ms"
    )


def test_the_ledger_is_the_source_not_the_current_price(alice, fake_provider):
    """A price changed after the turn does not change what the turn cost."""
    price("custom", "gpt-test", input=1.0, output=1.0, cache_read=None)
    conversation, _ = start_chat(alice, fake_provider)
    fake_provider.script(text="ok", usage={"input_tokens": 5000, "output_tokens": 5000}, path=CHAT)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    price("custom", "gpt-test", input=100.0, output=100.0, cache_read=None)
    assert " · $0.01 · " in small_print(conversation)


def test_an_estimated_reply_marks_its_cost_as_an_estimate(alice, fake_provider):
    price("custom", "gpt-test", input=3.0, output=15.0, cache_read=None)
    conversation, _ = start_chat(alice, fake_provider)
    # The provider reports no usage: the tokens, and so the cost, are this server's estimate.
    fake_provider.script(text="word " * 40, include_usage=False, path=CHAT)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    reply.refresh_from_db()
    assert reply.tokens_estimated
    event = UsageEvent.objects.get(message_id=reply.pk)
    assert event.tokens_estimated and event.cost_micro
    shown = small_print(conversation)
    assert shown.startswith(f"≈ {reply.input_tokens} in · {reply.output_tokens} out · ≈ $0.")
    assert format_cost(event.cost_micro, estimated=True) in shown


def test_a_model_without_a_price_says_so_never_zero(alice, fake_provider):
    conversation, _ = start_chat(alice, fake_provider, model="model-nobody-prices")
    fake_provider.script(text="ok", usage={"input_tokens": 10, "output_tokens": 2}, path=CHAT)
    _, reply = send(conversation)
    turns.run_turn(str(reply.pk))
    assert UsageEvent.objects.get(message_id=reply.pk).cost_micro is None
    shown = small_print(conversation)
    assert "price unknown" in shown and "$" not in shown


def test_the_final_event_carries_the_same_cost_as_a_reload(
    alice, fake_provider, celery_worker, asgi_server
):
    price("custom", "gpt-test", input=3.0, output=15.0, cache_read=None)
    conversation, _ = start_chat(alice, fake_provider)
    fake_provider.script(text="Live.", usage={"input_tokens": 412, "output_tokens": 230}, path=CHAT)
    _, reply = send(conversation)
    events = read_stream(asgi_server, alice, reply)
    assert events[-1].event == "done"
    wait_final(reply)
    assert "$0.0047" in events[-1].data["usage"]
    assert events[-1].data["usage"] == small_print(conversation)
