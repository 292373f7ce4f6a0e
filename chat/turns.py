"""One chat turn, run by a worker: claim, call the provider with the owner's key, stream the
reply into Redis, store the outcome once.

Provider calls are at most once per delivery of a turn: the turn is claimed with a
conditional UPDATE (queued → running), so a redelivered or duplicated task finds nothing to
claim and returns. Within one run, a call that failed *before the first token* may be retried
(rate limited or unavailable: at most two retries within twenty seconds, honouring
retry-after) or moved to the owner's next key for the same provider; after the first token,
never.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from django import db
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from chat import streams
from chat.models import Conversation, Message
from chat.rendering import render_markdown, turn_facts
from chat.selectors import conversation_system_prompt
from chat.services import PURPOSE_MESSAGE
from core import streams as live
from keys.models import ProviderKey
from keys.services import (
    connection_config,
    provider_key_mark_used,
    provider_key_open,
)
from providers import loop as relay
from providers.catalog import build_adapter, get_preset
from providers.errors import InvalidChatRequest, InvalidEndpoint, ProviderError, ProviderErrorKind
from providers.types import ChatAdapter, ChatMessage, ChatRequest, Finish, Role, TextDelta, Usage
from usage import ratelimits
from usage.prices import Price, TokenCounts, price_for
from usage.recording import TurnUsage, usage_record
from usage.services import BudgetError, budget_release, budget_reserve
from vault import crypto as vault
from vault.services import OwnerCipher

logger = logging.getLogger(__name__)

Status = Message.Status
KeyStatus = ProviderKey.Status

RETRYABLE_BEFORE_FIRST_TOKEN = {ProviderErrorKind.RATE_LIMITED, ProviderErrorKind.UNAVAILABLE}
FALLBACK_KINDS = {
    ProviderErrorKind.RATE_LIMITED,
    ProviderErrorKind.UNAVAILABLE,
    ProviderErrorKind.NO_CREDIT,
    ProviderErrorKind.INVALID_KEY,
}
MAX_RETRIES = 2
RETRY_BUDGET_SECONDS = 20.0

# What the page offers next to the error (chat.js), not words for the message itself; every
# other action is a sentence that ends the message.
ACTION_CODES = {"retry", "keys", "usage"}

_ACTIONS = {
    ProviderErrorKind.INVALID_KEY: "Check the key on the Keys page, or replace it.",
    ProviderErrorKind.NO_CREDIT: "Add credit to your provider account, then retry.",
    ProviderErrorKind.RATE_LIMITED: "Wait a moment, then retry.",
    ProviderErrorKind.UNAVAILABLE: "The provider is having trouble; retry in a moment.",
    ProviderErrorKind.CONTEXT_TOO_LONG: (
        "Start a new conversation, or use a model with a longer context."
    ),
    ProviderErrorKind.BAD_REQUEST: "Check the model name, or pick another model.",
    ProviderErrorKind.TIMEOUT: "Retry; if it keeps happening, try a faster model.",
    ProviderErrorKind.NETWORK: "Retry in a moment.",
    ProviderErrorKind.BAD_RESPONSE: (
        "Retry; if it keeps happening, the endpoint may not be compatible."
    ),
}


@dataclass
class TurnState:
    """What one turn has produced so far."""

    started: float = field(default_factory=time.monotonic)
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    usage: Usage | None = None
    finish: Finish | None = None
    cancelled: bool = False
    provider_calls: int = 0
    key: ProviderKey | None = None
    notices: list[str] = field(default_factory=list)
    input_estimate: int = 0
    price: Price | None = None  # the model's, looked up once when the turn starts
    cipher: OwnerCipher | None = None  # the owner's, opened once per turn
    ended: float | None = None  # set when the outcome is stored: one latency everywhere

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def got_tokens(self) -> bool:
        return self.first_token_at is not None


def candidate_keys(conversation: Conversation) -> list[ProviderKey]:
    """The conversation's key first, then the owner's other usable keys for the same provider."""
    keys = list(
        ProviderKey.objects.for_owner(conversation.owner)
        .filter(preset=conversation.preset)
        .usable()
        .exclude(status__in=[KeyStatus.INVALID, KeyStatus.NO_CREDIT])
        .order_by("priority", "created_at")
    )
    keys.sort(key=lambda key: key.pk != conversation.provider_key_id)  # stable: chosen first
    for key in keys:
        key.owner = conversation.owner  # loaded already
    return keys


def build_history(reply: Message, cipher: OwnerCipher) -> tuple[list[ChatMessage], int]:
    """The conversation before `reply`, oldest turns dropped to fit BYOK_CONTEXT_MAX_CHARS.

    Failed and empty replies are left out. Returns the messages and how many were dropped.
    """
    earlier = (
        Message.objects.filter(
            conversation_id=reply.conversation_id, created_at__lt=reply.created_at
        )
        .filter(status__in=[Status.DONE, Status.STOPPED])
        .order_by("created_at", "id")
    )
    history: list[ChatMessage] = []
    for message in earlier:
        text = cipher.open(PURPOSE_MESSAGE, message.pk, message.sealed_content)
        if text:
            role = Role.USER if message.role == Message.Role.USER else Role.ASSISTANT
            history.append(ChatMessage(role, text))
    budget = settings.BYOK_CONTEXT_MAX_CHARS
    dropped = 0
    while len(history) > 1 and sum(len(m.content) for m in history) > budget:
        history.pop(0)
        dropped += 1
    # Providers want the conversation to start with the user.
    while len(history) > 1 and history[0].role != Role.USER:
        history.pop(0)
        dropped += 1
    return history, dropped


def _turn_replies() -> QuerySet[Message]:
    """A claimed reply with what its turn reads of it: the conversation and the owner."""
    return Message.objects.select_related("conversation", "owner")


def warm_up() -> None:
    """Do at worker start what the first turn would otherwise wait for: the relay loop and
    its provider sessions (aiohttp's import, the trust store), the claimed reply's query,
    the Markdown renderer. Opens no database connection and calls nobody."""
    from providers import aio

    relay.submit(aio.warm_up(connection_config())).result(timeout=30)
    str(_turn_replies().filter(pk=uuid.UUID(int=0)).query)
    render_markdown("*ready*")


def run_turn(message_id: str) -> None:
    """Claim and run one turn. Safe to call twice: only the first call does anything."""
    now = timezone.now()
    claimed = Message.objects.filter(pk=message_id, status=Status.QUEUED).update(
        status=Status.RUNNING, started_at=now
    )
    if not claimed:
        return  # already taken, finished, stopped or deleted: never call the provider twice
    reply = _turn_replies().get(pk=message_id)
    reply.conversation.owner = reply.owner  # the same user: no second query for it
    publisher = streams.TurnPublisher(reply.pk)
    state = TurnState()
    try:
        _run(reply, publisher, state)
    except Exception:
        logger.exception("turn %s crashed", reply.pk)
        _finish_error(
            reply,
            publisher,
            state,
            kind="internal",
            text="Something went wrong on our side while writing this reply. Retry.",
            action="retry",
        )
    finally:
        # A no-op once the turn has settled; after the final event, off the user's path.
        budget_release(message_id=reply.pk)
        ratelimits.turn_release(user_id=reply.owner_id, message_id=reply.pk)


def _run(reply: Message, publisher: streams.TurnPublisher, state: TurnState) -> None:
    conversation = reply.conversation
    cipher = state.cipher = OwnerCipher(reply.owner)
    history, dropped = build_history(reply, cipher)
    if dropped:
        state.notices.append(
            f"The {dropped} oldest message{'s' if dropped != 1 else ''} of this conversation "
            "were left out to fit the model's context."
        )
    if not history:
        _finish_error(
            reply,
            publisher,
            state,
            kind="bad_request",
            text="There is no message to answer.",
            action="",
        )
        return
    system_prompt = conversation_system_prompt(conversation, cipher) or None
    keys = candidate_keys(conversation)
    if not keys:
        _finish_error(
            reply,
            publisher,
            state,
            kind="no_key",
            text="You have no usable key for this provider. Add or replace one on the Keys page.",
            action="keys",
        )
        return
    if conversation.provider_key_id and keys[0].pk != conversation.provider_key_id:
        state.notices.append(f"Your chosen key is not usable; “{keys[0].label}” answered instead.")
    last_error: ProviderError | None = None
    # Generous on purpose (about 3 characters a token): the reservation is a worst case.
    state.input_estimate = (
        sum(len(m.content) for m in history) + len(system_prompt or "")
    ) // 3 + 16
    state.price = price_for(conversation.preset, conversation.model)
    for index, key in enumerate(keys):
        state.key = key
        if index:
            budget_release(message_id=reply.pk)  # what the previous key held
        try:
            budget_reserve(
                owner=reply.owner,
                message_id=reply.pk,
                key_id=key.pk,
                key_label=key.label,
                model=conversation.model,
                price=state.price,
                input_tokens_estimate=state.input_estimate,
                max_output_tokens=settings.BYOK_MAX_OUTPUT_TOKENS,
            )
        except BudgetError as error:
            _finish_error(
                reply, publisher, state, kind="budget", text=error.message, action="usage"
            )
            return
        last_error = _call_with_retries(reply, key, history, system_prompt, publisher, state)
        if last_error is None or state.got_tokens or state.cancelled:
            break
        _note_key_failure(key, last_error)
        has_next = index + 1 < len(keys)
        if last_error.kind in FALLBACK_KINDS and has_next:
            state.notices.append(
                f"“{key.label}” failed ({last_error.user_message.rstrip('.')}); "
                f"“{keys[index + 1].label}” answered instead."
            )
            continue
        break
    if last_error is not None and not state.cancelled:
        _finish_provider_error(reply, publisher, state, last_error)
    else:
        _finish_success(reply, publisher, state)


def _note_key_failure(key: ProviderKey, error: ProviderError) -> None:
    """An invalid or empty key is marked so on the Keys page as well."""
    status = {
        ProviderErrorKind.INVALID_KEY: KeyStatus.INVALID,
        ProviderErrorKind.NO_CREDIT: KeyStatus.NO_CREDIT,
    }.get(error.kind)
    if status is not None:
        now = timezone.now()
        ProviderKey.objects.filter(pk=key.pk).exclude(status=KeyStatus.REVOKED).update(
            status=status, status_reason=error.user_message, last_verified_at=now, updated_at=now
        )


def _call_with_retries(
    reply: Message,
    key: ProviderKey,
    history: list[ChatMessage],
    system_prompt: str | None,
    publisher: streams.TurnPublisher,
    state: TurnState,
) -> ProviderError | None:
    """Call the provider with `key`; retry before the first token when that can help."""
    budget_ends = time.monotonic() + RETRY_BUDGET_SECONDS
    for attempt in range(MAX_RETRIES + 1):
        error = _call_once(reply, key, history, system_prompt, publisher, state)
        if error is None or state.got_tokens or state.cancelled:
            return error
        if error.kind not in RETRYABLE_BEFORE_FIRST_TOKEN or attempt == MAX_RETRIES:
            return error
        wait = error.retry_after if error.retry_after is not None else float(2**attempt)
        if time.monotonic() + wait > budget_ends:
            return error
        if _sleep_unless_cancelled(reply.pk, wait):
            state.cancelled = True
            return None
    return None  # pragma: no cover - the loop always returns


def _sleep_unless_cancelled(message_id: object, seconds: float) -> bool:
    stop = threading.Event()
    watcher = live.get_cancel_watcher()
    watcher.watch(streams.cancel_key(message_id), stop.set)
    try:
        return stop.wait(seconds)
    finally:
        watcher.unwatch(streams.cancel_key(message_id))


@sensitive_variables("secret", "request")
def _call_once(
    reply: Message,
    key: ProviderKey,
    history: list[ChatMessage],
    system_prompt: str | None,
    publisher: streams.TurnPublisher,
    state: TurnState,
) -> ProviderError | None:
    """One streaming call. Returns the error it ended with, or None."""
    try:
        secret = provider_key_open(key, cipher=state.cipher)
        adapter = build_adapter(
            get_preset(key.preset), config=connection_config(), base_url=key.base_url
        )
        request = ChatRequest(
            model=reply.conversation.model,
            messages=history,
            api_key=secret,
            system_prompt=system_prompt,
            max_tokens=settings.BYOK_MAX_OUTPUT_TOKENS,
        )
    except vault.VaultError:
        logger.error("key %s could not be opened for turn %s", key.pk, reply.pk)
        return ProviderError(
            ProviderErrorKind.INVALID_KEY, "This key could not be decrypted; replace its secret."
        )
    except InvalidChatRequest as error:
        return ProviderError(ProviderErrorKind.BAD_REQUEST, error.user_message)
    except InvalidEndpoint as error:
        return ProviderError(ProviderErrorKind.NETWORK, error.user_message)
    del secret
    state.provider_calls += 1
    return ProviderCall(reply.pk, publisher, state).run(adapter, request)


class ProviderCall:
    """One streaming provider call, read on the process's relay loop (`providers.loop`).

    The loop does the per-token work for every running turn (keep the text, hand it to the
    process's stream writer); the turn's thread just waits for the end, a cancel (from the
    process's cancel watcher) or the deadline, so a turn costs no CPU between tokens and no
    thread of its own while it streams. A cancel ends the turn at once and cancels the
    call's task, which closes its connection even while the provider is silent (before its
    first byte too); the task touches nothing of the turn after that.
    """

    def __init__(
        self, message_id: object, publisher: streams.TurnPublisher, state: TurnState
    ) -> None:
        self.message_id = message_id
        self.publisher = publisher
        self.state = state
        self.lock = threading.Lock()  # the loop holds it while it updates the turn
        self.wake = threading.Event()
        self.stopped = False
        self.finished = False
        self.cancelled = False
        self.error: ProviderError | None = None

    def run(self, adapter: ChatAdapter, request: ChatRequest) -> ProviderError | None:
        if db.connection.settings_dict["OPTIONS"].get("pool") and not (
            db.connection.in_atomic_block
        ):
            # Seconds of streaming need no database: the connection goes back to the pool
            # for other turns, and is taken again to store the outcome.
            db.connection.close()
        watcher = live.get_cancel_watcher()
        watcher.watch(streams.cancel_key(self.message_id), self._cancel)
        task = relay.submit(self._read(adapter, request))
        try:
            in_time = self.wake.wait(settings.BYOK_TURN_SOFT_LIMIT)
        finally:
            watcher.unwatch(streams.cancel_key(self.message_id))
            with self.lock:
                self.stopped = True
        if self.finished:
            return self.error
        task.cancel()  # cancelled or out of time: end the provider call now
        if self.cancelled:
            self.state.cancelled = True
            return None
        assert not in_time
        return ProviderError(ProviderErrorKind.TIMEOUT)

    def _cancel(self) -> None:
        self.cancelled = True
        self.wake.set()

    async def _read(self, adapter: ChatAdapter, request: ChatRequest) -> None:
        state = self.state
        error: ProviderError | None = None
        try:
            async with contextlib.aclosing(adapter.astream_chat(request)) as events:
                async for event in events:
                    with self.lock:
                        if self.stopped:
                            return
                        if isinstance(event, TextDelta):
                            if event.text:
                                if state.first_token_at is None:
                                    state.first_token_at = time.monotonic()
                                state.parts.append(event.text)
                                self.publisher.delta(event.text)
                        elif isinstance(event, Usage):
                            state.usage = event
                        elif isinstance(event, Finish):
                            state.finish = event
        except ProviderError as caught:
            error = caught
        except InvalidEndpoint as caught:
            error = ProviderError(ProviderErrorKind.NETWORK, caught.user_message)
        except InvalidChatRequest as caught:
            error = ProviderError(ProviderErrorKind.BAD_REQUEST, caught.user_message)
        except Exception:
            if not self.stopped:
                logger.exception("provider stream crashed for turn %s", self.message_id)
            error = ProviderError(ProviderErrorKind.BAD_RESPONSE)
        with self.lock:
            if not self.stopped:
                self.error = error
                self.finished = True
                self.wake.set()


def _timings(state: TurnState) -> dict[str, int | None]:
    now = state.ended or time.monotonic()
    return {
        "ttft_ms": round((state.first_token_at - state.started) * 1000)
        if state.first_token_at
        else None,
        "latency_ms": round((now - state.started) * 1000),
    }


def _token_counts(state: TurnState) -> tuple[TokenCounts, int, bool] | None:
    """The turn's tokens, the reasoning among them, and whether they are an estimate.

    A stream that broke off before the provider reported usage still billed what it sent:
    about four characters a token out, the reservation's estimate in. None: nothing sent.
    """
    usage = state.usage
    if usage is not None:
        tokens = TokenCounts(
            input=usage.input_tokens,
            output=usage.output_tokens,
            cached=usage.cached_input_tokens,
            cache_write=usage.cache_write_input_tokens,
        )
        return tokens, usage.reasoning_tokens, False
    if state.text:
        tokens = TokenCounts(input=state.input_estimate, output=max(1, len(state.text) // 4))
        return tokens, 0, True
    return None


def _usage_fields(state: TurnState) -> dict[str, int | bool | None]:
    counts = _token_counts(state)
    if counts is None:
        return {}
    tokens, reasoning, estimated = counts
    return {
        "input_tokens": tokens.input,
        "output_tokens": tokens.output,
        "cached_tokens": tokens.cached,
        "reasoning_tokens": reasoning,
        "tokens_estimated": estimated,
    }


def _turn_usage(reply: Message, state: TurnState, status: str, error_kind: str) -> TurnUsage:
    tokens, reasoning, estimated = _token_counts(state) or (TokenCounts(0, 0), 0, False)
    timings = _timings(state)
    key = state.key
    return TurnUsage(
        owner_id=reply.owner_id,
        message_id=reply.pk,
        conversation_id=reply.conversation_id,
        key_id=key.pk if key else None,
        key_label=key.label if key else "",
        preset=key.preset if key else reply.conversation.preset,
        model=reply.conversation.model,
        status=status,
        error_kind=error_kind,
        tokens=tokens,
        reasoning_tokens=reasoning,
        ttft_ms=timings["ttft_ms"],
        latency_ms=timings["latency_ms"],
        price=state.price,
        estimated=estimated,
    )


def _store(reply: Message, state: TurnState, **fields: object) -> bool:
    """Store the outcome and its usage once: only a turn still `running` can be finished."""
    cipher = state.cipher or OwnerCipher(reply.owner)
    state.ended = time.monotonic()  # the message, its usage record and its final event agree
    values = {
        "sealed_content": cipher.seal(PURPOSE_MESSAGE, reply.pk, state.text),
        "finished_at": timezone.now(),
        "provider_calls": state.provider_calls,
        "provider_key": state.key,
        "notice": " ".join(state.notices)[:500],
        **_timings(state),
        **_usage_fields(state),
        **fields,
    }
    with transaction.atomic():
        stored = bool(Message.objects.filter(pk=reply.pk, status=Status.RUNNING).update(**values))
        if stored:
            usage_record(
                turn=_turn_usage(
                    reply, state, str(fields["status"]), str(fields.get("error_kind", ""))
                )
            )
    return stored


def _facts(state: TurnState) -> dict[str, str]:
    """The reply's small print as stored (see `_store`), for its final event."""
    counts = _token_counts(state)
    return turn_facts(
        key_label=state.key.label if state.key is not None else "",
        input_tokens=counts[0].input if counts else None,
        output_tokens=counts[0].output if counts else None,
        ttft_ms=_timings(state)["ttft_ms"],
        estimated=counts[2] if counts else False,
    )


def _after_finish(state: TurnState) -> None:
    """Bookkeeping that the user does not wait for: runs after the final event is sent."""
    if state.key is not None and state.provider_calls:
        provider_key_mark_used(key=state.key)


def _finish_success(reply: Message, publisher: streams.TurnPublisher, state: TurnState) -> None:
    status = Status.STOPPED if state.cancelled else Status.DONE
    finish_reason = state.finish.reason.value if state.finish else ""
    if status == Status.DONE and finish_reason == "length":
        state.notices.append("The reply reached the length limit and was cut short.")
    if _store(reply, state, status=status, finish_reason=finish_reason):
        publisher.done(
            status=status,
            html=render_markdown(state.text),
            notice=" ".join(state.notices),
            facts=_facts(state),
        )
        _after_finish(state)


def _finish_provider_error(
    reply: Message, publisher: streams.TurnPublisher, state: TurnState, error: ProviderError
) -> None:
    text = error.user_message
    if error.provider_message and error.kind in {
        ProviderErrorKind.BAD_REQUEST,
        ProviderErrorKind.CONTEXT_TOO_LONG,
    }:
        text = f"{text} The provider said: {error.provider_message}"
    if state.got_tokens:
        text = f"The reply was cut off: {text[0].lower()}{text[1:]} What arrived is kept."
    if error.kind == ProviderErrorKind.RATE_LIMITED and error.retry_after:
        text += f" Try again in {max(1, round(error.retry_after))} seconds."
    _finish_error(
        reply,
        publisher,
        state,
        kind=error.kind.value,
        text=text,
        action=_ACTIONS.get(error.kind, ""),
    )


def _finish_error(
    reply: Message,
    publisher: streams.TurnPublisher,
    state: TurnState,
    *,
    kind: str,
    text: str,
    action: str,
) -> None:
    message = text if not action or action in ACTION_CODES else f"{text} {action}"
    if _store(reply, state, status=Status.ERROR, error_kind=kind, error_message=message[:500]):
        publisher.error(
            message=message,
            action=action,
            html=render_markdown(state.text) if state.text else "",
            facts=_facts(state),
        )
        _after_finish(state)
