"""The completion engine: one model call for an owner, with the rules that keep money and
keys safe, written once for every surface.

A surface (the chat, the API) describes a call with a `Sink` and hands it to `run`, on a
Celery worker, the only place a provider key is opened. The engine then:

1. claims the call (`Sink.claim`: a conditional UPDATE on the surface's row), so a
   redelivered task never calls the provider a second time;
2. asks the sink for the prompt (`Sink.prompt`);
3. picks the candidate keys: the chosen one first, then the owner's other usable keys for
   the same provider *and the same canonical base URL* — never another server;
4. reserves the worst case under the owner's spend caps, per key tried;
5. calls the provider on the relay loop, handing each delta to `Sink.delta`; before the
   first token a rate-limited or unavailable provider is retried (two retries within
   twenty seconds, honouring retry-after) and a failing key falls back to the next
   candidate; after the first token, never;
6. ends the call with `close`: the sink stores its outcome (`Sink.store`, in one
   transaction with the usage record, so usage is recorded once and the reservation
   settled at the real cost), then publishes it (`Sink.published`); the key's last use and
   the owner's key-use audit are updated (a key that failed was marked on the Keys page
   in step 5); the reservation and the rate-limit slot are given back on every ending.

The engine knows nothing of messages, Markdown or pages: what a surface shows is its
sink's business.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from django import db
from django.conf import settings
from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from accounts.models import User
from core import streams as live
from core.redis import get_redis
from keys.models import ProviderKey
from keys.services import (
    connection_config,
    provider_key_mark_failing,
    provider_key_mark_used,
    provider_key_open,
)
from providers import aio
from providers import loop as relay
from providers.catalog import build_adapter, get_preset, model_generation, resolve_base_url
from providers.errors import InvalidChatRequest, InvalidEndpoint, ProviderError, ProviderErrorKind
from providers.reasoning import Generation
from providers.types import ChatAdapter, ChatMessage, ChatRequest, Finish, TextDelta, Usage
from usage import ratelimits
from usage.prices import Price, TokenCounts, input_tokens_bound, price_for
from usage.recording import TurnUsage, usage_record
from usage.services import BudgetError, budget_release, budget_reserve
from vault.services import OwnerCipher, VaultError

logger = logging.getLogger(__name__)

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
# A reply cut off before the provider reported usage is billed about this many characters a
# token, in and out (the reservation's worst case would bill its input about twice over).
CHARS_PER_TOKEN_ESTIMATED = 4

DONE = "done"
STOPPED = "stopped"
ERROR = "error"


# --- what a surface gives the engine ---------------------------------------------------


@dataclass(frozen=True)
class KeyChoice:
    """Which key a call should use: `key_id` first, then any other usable key of the owner
    for `preset` at `base_url` (None: the preset's default). Never another server."""

    preset: str
    base_url: str | None = None
    key_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Call:
    """One model call for an owner. `call_id` is unique (the surface's row: a chat reply's
    message id); its usage event, reservation, rate-limit slot and stop flag all use it.
    `group_id` is what its usage is grouped under (a conversation), if anything.

    `max_output_tokens` is the most the surface wants; the limit sent is that or less, what
    the owner's caps afford (`budget_reserve`). `temperature` (None: the provider's
    default) and `reasoning_effort` (low / medium / high; None: the model's) are sent as
    `providers.reasoning` applies them to the model (a model may take neither). `purpose` is
    what its usage event says the call was for (`usage.models.UsageEvent.Purpose`)."""

    call_id: uuid.UUID
    owner: User
    choice: KeyChoice
    model: str
    max_output_tokens: int
    group_id: uuid.UUID | None = None
    temperature: float | None = None
    reasoning_effort: str | None = None
    purpose: str = "chat"


@dataclass(frozen=True)
class Prompt:
    """What is sent: the messages (oldest first, starting with the user's), an optional
    system prompt, and notices for the outcome (e.g. messages left out to fit)."""

    messages: list[ChatMessage]
    system_prompt: str | None = None
    notices: tuple[str, ...] = ()


class Refused(Exception):
    """A call that cannot start or cannot be made, with a message fit for the user.

    `kind` names why (`no_key`, `budget`, `bad_request`, `rate_limited`...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class Outcome:
    """How a call ended, as the sink stores and publishes it.

    `tokens` is None when nothing was sent; `estimated` says the counts are this server's
    (the stream ended before the provider reported usage). `error_message` is a sentence
    for the user; `error` the provider's classified error, when there was one.
    `sent` is what the last provider request was sent (its output limit, temperature and
    reasoning effort as applied); None when no request was made.
    """

    status: str
    text: str = ""
    key: ProviderKey | None = None
    tokens: TokenCounts | None = None
    reasoning_tokens: int = 0
    estimated: bool = False
    finish_reason: str = ""
    error_kind: str = ""
    error_message: str = ""
    error: ProviderError | None = None
    notices: list[str] = field(default_factory=list)
    ttft_ms: int | None = None
    latency_ms: int | None = None
    provider_calls: int = 0
    sent: Generation | None = None

    @property
    def cut_off_by_length(self) -> bool:
        return self.status == DONE and self.finish_reason == "length"


class Sink(Protocol):
    """What a surface gives the engine for one call."""

    def claim(self) -> Call | None:
        """Take the call (a conditional UPDATE on the surface's row); what it runs with, or
        None when it is taken, finished or gone."""
        ...

    def prompt(self, cipher: OwnerCipher) -> Prompt:
        """The messages to send, opened with the owner's cipher. Raises Refused."""
        ...

    def delta(self, text: str) -> None:
        """Text as it arrives. Called on the relay loop: it must not block."""
        ...

    def checkpoint(self, text: str, tokens: TokenCounts, cipher: OwnerCipher) -> None:
        """Save the text so far and its estimated tokens on the surface's row (the call is
        still running), so that a worker that dies leaves it behind. Called every
        BYOK_TURN_CHECKPOINT_SECONDS while text arrives, from the call's thread."""
        ...

    def store(self, outcome: Outcome, cipher: OwnerCipher | None) -> bool:
        """Write the outcome to the surface's row, if the call is still open there; inside
        the transaction that records its usage. False: it was closed already. `cipher` is
        None only when the owner's data key does not open and the outcome has no text."""
        ...

    def published(self, outcome: Outcome, cipher: OwnerCipher | None) -> None:
        """The outcome is stored: tell whoever follows the call (its final event, sealed
        with `cipher`; None when the owner's data key does not open)."""
        ...


# --- stop ---------------------------------------------------------------------------------


def cancel_key(call_id: object) -> str:
    return f"byok:call:{call_id}:cancel"


def request_cancel(call_id: object) -> None:
    """Ask the worker running the call to stop it (within `BYOK_CANCEL_POLL_SECONDS`)."""
    get_redis().set(cancel_key(call_id), "1", ex=settings.BYOK_TURN_STREAM_TTL)


# --- running a call -------------------------------------------------------------------------


@dataclass
class _State:
    """What one call has produced so far."""

    started: float = field(default_factory=time.monotonic)
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    usage: Usage | None = None
    finish: Finish | None = None
    cancelled: bool = False
    provider_calls: int = 0
    key: ProviderKey | None = None
    notices: list[str] = field(default_factory=list)
    input_chars: int = 0  # the prompt's, system prompt included
    max_output_tokens: int = 0  # the limit sent: the call's, or what its caps afford
    sent: Generation | None = None  # what the last provider request was sent
    checkpointed_parts: int = 0  # how many of `parts` the last checkpoint saved
    price: Price | None = None
    priced: bool = False  # `price` was looked up (None then means unknown)
    closed: bool = False  # this worker stored the outcome (and gave back what it held)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def got_tokens(self) -> bool:
        return self.first_token_at is not None

    def outcome(self, status: str, **fields: object) -> Outcome:
        ended = time.monotonic()
        counts = self._token_counts()
        outcome = Outcome(
            status=status,
            text=self.text,
            key=self.key,
            tokens=counts[0] if counts else None,
            reasoning_tokens=counts[1] if counts else 0,
            estimated=counts[2] if counts else False,
            finish_reason=self.finish.reason.value if self.finish else "",
            notices=list(self.notices),
            ttft_ms=round((self.first_token_at - self.started) * 1000)
            if self.first_token_at
            else None,
            latency_ms=round((ended - self.started) * 1000),
            provider_calls=self.provider_calls,
            sent=self.sent,
        )
        return dataclasses.replace(outcome, **fields)  # type: ignore[arg-type]

    def _token_counts(self) -> tuple[TokenCounts, int, bool] | None:
        """The tokens, the reasoning among them, and whether they are an estimate. A stream
        that broke off before the provider reported usage still billed what it sent."""
        usage = self.usage
        if usage is not None:
            tokens = TokenCounts(
                input=usage.input_tokens,
                output=usage.output_tokens,
                cached=usage.cached_input_tokens,
                cache_write=usage.cache_write_input_tokens,
            )
            return tokens, usage.reasoning_tokens, False
        if self.text:
            return estimated_tokens(input_chars=self.input_chars, text=self.text), 0, True
        return None


def estimated_tokens(*, input_chars: int, text: str) -> TokenCounts:
    """What a reply cut off before the provider reported usage is billed: about
    CHARS_PER_TOKEN_ESTIMATED characters a token, in and out."""
    return TokenCounts(
        input=max(1, input_chars // CHARS_PER_TOKEN_ESTIMATED),
        output=max(1, len(text) // CHARS_PER_TOKEN_ESTIMATED),
    )


def warm_up() -> None:
    """What a worker's first call would otherwise wait for: the relay loop and its provider
    sessions (aiohttp's import, the trust store). Calls nobody."""
    relay.submit(aio.warm_up(connection_config())).result(timeout=30)


def lease_key(call_id: object) -> str:
    """The running call's lease in Redis, renewed by its worker while it holds the call."""
    return f"byok:call:{call_id}:lease"


def lease_held(call_id: object) -> bool:
    """Whether a worker still holds the call (its lease has not expired). True when Redis
    cannot say: a call is never ended for want of an answer."""
    try:
        return bool(get_redis().exists(lease_key(call_id)))
    except Exception:
        return True


def lease_lost(call_id: object) -> bool:
    """Whether the call's worker is gone: its lease is missing although Redis has been up
    longer than a lease (right after a Redis restart every lease is missing until the
    workers renew them). False when Redis cannot say."""
    try:
        client = get_redis()
        if client.exists(lease_key(call_id)):
            return False
        uptime = int(client.info("server").get("uptime_in_seconds", 0))
    except Exception:
        return False
    return uptime > settings.BYOK_TURN_LEASE_SECONDS


def run(sink: Sink) -> None:
    """Claim and run one call. Safe to call twice: only the first call does anything."""
    call = sink.claim()
    if call is None:
        return  # taken, finished, stopped or deleted: never call the provider twice
    state = _State()
    cipher = None
    watcher = live.get_cancel_watcher()
    watcher.hold(lease_key(call.call_id))
    try:
        cipher = OwnerCipher(call.owner)
        _run(call, sink, state, cipher)  # every ending goes through `_end`
    except StoreGaveUp:
        # The database stayed away: the reaper ends the call from its last checkpoint
        # once the lease (dropped below) has expired.
        logger.error(
            "call %s: its outcome could not be stored; the reaper will end it", call.call_id
        )
    except Exception:
        logger.exception("call %s crashed", call.call_id)
        crashed = state.outcome(
            ERROR,
            error_kind="internal",
            error_message="Something went wrong on our side while writing this reply. Retry.",
        )
        try:
            _end(call, sink, state, crashed, cipher)
        except StoreGaveUp:
            logger.error("call %s: its outcome could not be stored", call.call_id)
    finally:
        watcher.drop(lease_key(call.call_id))
        if not state.closed:  # closed elsewhere, or not stored: what this worker held goes
            with _best_effort(f"call {call.call_id}: giving back its slot and reservation"):
                _release(call)


def _release(call: Call) -> None:
    budget_release(message_id=call.call_id)
    ratelimits.turn_release(user_id=call.owner.pk, message_id=call.call_id)


def candidate_keys(owner: User, choice: KeyChoice) -> list[ProviderKey]:
    """The chosen key first, then the owner's other usable keys for the same provider at the
    same canonical base URL, in the owner's order. SECURITY: a key of another server is
    never a candidate: the conversation and its system prompt go only where the user chose.
    """
    try:
        base_url = choice.base_url or resolve_base_url(get_preset(choice.preset))
    except (KeyError, InvalidEndpoint):
        return []  # a server nobody knows any more (a custom preset whose key was deleted)
    keys = list(
        ProviderKey.objects.for_owner(owner)
        .filter(preset=choice.preset, base_url=base_url)
        .usable()
        .exclude(status__in=[KeyStatus.INVALID, KeyStatus.NO_CREDIT])
        .order_by("priority", "created_at")
    )
    keys.sort(key=lambda key: key.pk != choice.key_id)  # stable: the chosen one first
    for key in keys:
        key.owner = owner  # loaded already
    return keys


def _run(call: Call, sink: Sink, state: _State, cipher: OwnerCipher) -> None:
    state.price, state.priced = price_for(call.choice.preset, call.model), True
    try:
        prompt = sink.prompt(cipher)
    except Refused as refused:
        outcome = state.outcome(ERROR, error_kind=refused.kind, error_message=refused.message)
        _end(call, sink, state, outcome, cipher)
        return
    state.notices.extend(prompt.notices)
    keys = candidate_keys(call.owner, call.choice)
    if not keys:
        outcome = state.outcome(
            ERROR,
            error_kind="no_key",
            error_message=(
                "You have no usable key for this provider. Add or replace one on the Keys page."
            ),
        )
        _end(call, sink, state, outcome, cipher)
        return
    if call.choice.key_id and keys[0].pk != call.choice.key_id:
        state.notices.append(f"Your chosen key is not usable; “{keys[0].label}” answered instead.")
    texts = [m.content for m in prompt.messages]
    if prompt.system_prompt:
        texts.append(prompt.system_prompt)
    state.input_chars = sum(len(text) for text in texts)
    input_bound = input_tokens_bound(texts)
    last_error: ProviderError | None = None
    for index, key in enumerate(keys):
        state.key = key
        if index:
            budget_release(message_id=call.call_id)  # what the previous key held
        try:
            state.max_output_tokens = budget_reserve(
                owner=call.owner,
                message_id=call.call_id,
                key_id=key.pk,
                key_label=key.label,
                model=call.model,
                price=state.price,
                input_tokens_bound=input_bound,
                max_output_tokens=call.max_output_tokens,
            )
        except BudgetError as error:
            outcome = state.outcome(ERROR, error_kind="budget", error_message=error.message)
            _end(call, sink, state, outcome, cipher)
            return
        if state.max_output_tokens < call.max_output_tokens and not index:
            state.notices.append(
                f"This reply could be at most {state.max_output_tokens:,} tokens long, "
                "to stay under your spend cap."
            )
        last_error = _call_with_retries(call, sink, key, prompt, state, cipher)
        if last_error is None or state.got_tokens or state.cancelled:
            break
        provider_key_mark_failing(key=key, error=last_error)
        has_next = index + 1 < len(keys)
        if last_error.kind in FALLBACK_KINDS and has_next:
            state.notices.append(
                f"“{key.label}” failed ({last_error.user_message.rstrip('.')}); "
                f"“{keys[index + 1].label}” answered instead."
            )
            continue
        break
    if last_error is not None and not state.cancelled:
        outcome = state.outcome(
            ERROR,
            error_kind=last_error.kind.value,
            error_message=describe(last_error),
            error=last_error,
        )
        _end(call, sink, state, outcome, cipher)
    else:
        outcome = state.outcome(STOPPED if state.cancelled else DONE)
        _end(call, sink, state, outcome, cipher)


class StoreGaveUp(Exception):
    """The database stayed unreachable for BYOK_TURN_STORE_RETRY_SECONDS: the outcome is
    dropped (the last checkpoint stays, and the reaper ends the call with it)."""


# What a database that went away raises (a dropped connection, a pool that found none).
TRANSIENT_DATABASE_ERRORS = (db.OperationalError, db.InterfaceError)


def _end(
    call: Call, sink: Sink, state: _State, outcome: Outcome, cipher: OwnerCipher | None
) -> None:
    """Close the call; while the database is unreachable, keep the outcome and retry with
    backoff for BYOK_TURN_STORE_RETRY_SECONDS (the lease is renewed meanwhile, so the
    reaper leaves the call alone). Storing is one conditional transaction: a retry after a
    commit whose answer was lost stores nothing twice."""
    price = state.price if state.priced else LOOK_UP
    give_up_at = time.monotonic() + settings.BYOK_TURN_STORE_RETRY_SECONDS
    delay = 0.5
    attempts = 0
    while True:
        try:
            state.closed = close(call, sink, outcome, cipher=cipher, price=price)
            if attempts:
                logger.warning("call %s: stored after %d retries", call.call_id, attempts)
            return
        except TRANSIENT_DATABASE_ERRORS:
            if time.monotonic() + delay > give_up_at:
                raise StoreGaveUp from None
            if not attempts:
                logger.warning(
                    "call %s: the database is unreachable; keeping the reply and retrying",
                    call.call_id,
                )
            attempts += 1
            _drop_connection()
            time.sleep(delay)  # the worker's own backoff
            delay = min(delay * 2, 10.0)


def _give_back_pooled_connection() -> None:
    """Return this thread's connection to the pool (PostgreSQL), outside a transaction."""
    if db.connection.settings_dict["OPTIONS"].get("pool") and not db.connection.in_atomic_block:
        db.connection.close()


def _drop_connection() -> None:
    """Forget this thread's database connection, so the next query opens a fresh one."""
    with contextlib.suppress(Exception):
        db.connection.close()


@contextlib.contextmanager
def _best_effort(what: str) -> Iterator[None]:
    """For steps after the outcome is stored (or given up on): a failure is logged, and
    what it would have done heals on its own (a slot goes stale, a reservation is settled
    by the stored usage)."""
    try:
        yield
    except Exception:
        logger.warning("%s failed", what, exc_info=True)


def describe(error: ProviderError) -> str:
    """What went wrong, for the user: the kind's own words, the provider's where they help
    (a bad request, a context too long), and how long to wait when it said so."""
    return (what_failed(error) + " " + when_to_retry(error)).strip()


def what_failed(error: ProviderError) -> str:
    """The kind's own words, and the provider's where they help."""
    text = error.user_message
    if error.provider_message and error.kind in {
        ProviderErrorKind.BAD_REQUEST,
        ProviderErrorKind.CONTEXT_TOO_LONG,
    }:
        text = f"{text} The provider said: {error.provider_message}"
    return text


def when_to_retry(error: ProviderError) -> str:
    """The sentence "Try again in N seconds." when a rate-limiting provider said how long."""
    if error.kind == ProviderErrorKind.RATE_LIMITED and error.retry_after:
        seconds = max(1, round(error.retry_after))
        return f"Try again in {seconds} second{'' if seconds == 1 else 's'}."
    return ""


def _call_with_retries(
    call: Call,
    sink: Sink,
    key: ProviderKey,
    prompt: Prompt,
    state: _State,
    cipher: OwnerCipher,
) -> ProviderError | None:
    """Call the provider with `key`; retry before the first token when that can help."""
    budget_ends = time.monotonic() + RETRY_BUDGET_SECONDS
    for attempt in range(MAX_RETRIES + 1):
        error = _call_once(call, sink, key, prompt, state, cipher)
        if error is None or state.got_tokens or state.cancelled:
            return error
        if error.kind not in RETRYABLE_BEFORE_FIRST_TOKEN or attempt == MAX_RETRIES:
            return error
        wait = error.retry_after if error.retry_after is not None else float(2**attempt)
        if time.monotonic() + wait > budget_ends:
            return error
        if _sleep_unless_cancelled(call.call_id, wait):
            state.cancelled = True
            return None
    return None  # pragma: no cover - the loop always returns


def _sleep_unless_cancelled(call_id: object, seconds: float) -> bool:
    stop = threading.Event()
    watcher = live.get_cancel_watcher()
    watcher.watch(cancel_key(call_id), stop.set)
    try:
        return stop.wait(seconds)
    finally:
        watcher.unwatch(cancel_key(call_id))


@sensitive_variables("secret", "request")
def _call_once(
    call: Call,
    sink: Sink,
    key: ProviderKey,
    prompt: Prompt,
    state: _State,
    cipher: OwnerCipher,
) -> ProviderError | None:
    """One streaming call. Returns the error it ended with, or None."""
    try:
        secret = provider_key_open(key, cipher=cipher)
        preset = get_preset(key.preset)
        adapter = build_adapter(preset, config=connection_config(), base_url=key.base_url)
        request = ChatRequest(
            model=call.model,
            messages=prompt.messages,
            api_key=secret,
            system_prompt=prompt.system_prompt,
            max_tokens=state.max_output_tokens or call.max_output_tokens,
            temperature=call.temperature,
            reasoning_effort=call.reasoning_effort,
        )
    except VaultError:
        logger.error("key %s could not be opened for call %s", key.pk, call.call_id)
        return ProviderError(
            ProviderErrorKind.INVALID_KEY, "This key could not be decrypted; replace its secret."
        )
    except InvalidChatRequest as error:
        return ProviderError(ProviderErrorKind.BAD_REQUEST, error.user_message)
    except InvalidEndpoint as error:
        return ProviderError(ProviderErrorKind.NETWORK, error.user_message)
    del secret
    state.provider_calls += 1
    # The adapter builds its body by the same rule: this is what the provider is sent.
    state.sent = model_generation(
        preset,
        request.model,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        effort=request.reasoning_effort,
    )
    logger.debug("call %s: %s with key %s at %s", call.call_id, call.model, key.pk, key.base_url)
    checkpoint = functools.partial(_checkpoint, call, sink, state, cipher)
    return _ProviderCall(call.call_id, sink.delta, state, checkpoint).run(adapter, request)


def _checkpoint(call: Call, sink: Sink, state: _State, cipher: OwnerCipher) -> None:
    """Save the text so far (when it grew), sealed, with its estimated tokens: what the
    user has seen survives this worker. A database that is away skips it."""
    parts = len(state.parts)  # appended by the relay loop; a snapshot of the count is safe
    if parts == state.checkpointed_parts:
        return
    text = "".join(state.parts[:parts])
    try:
        sink.checkpoint(text, estimated_tokens(input_chars=state.input_chars, text=text), cipher)
        state.checkpointed_parts = parts
    except TRANSIENT_DATABASE_ERRORS:
        logger.warning("call %s: checkpoint skipped, the database is unreachable", call.call_id)
        _drop_connection()
    except Exception:  # a checkpoint must never end the call it saves
        logger.exception("call %s: checkpoint failed", call.call_id)
    finally:
        _give_back_pooled_connection()  # until the next checkpoint


class _ProviderCall:
    """One streaming provider call, read on the process's relay loop (`providers.loop`).

    The loop does the per-token work for every running call (keep the text, hand it to the
    sink); the call's thread just waits for the end, a stop (from the process's cancel
    watcher) or the deadline, so a call costs no CPU between tokens and no thread of its
    own while it streams. A stop ends the call at once and cancels its task, which closes
    the connection even while the provider is silent (before its first byte too); the task
    touches nothing of the call after that.
    """

    def __init__(
        self,
        call_id: object,
        deliver: Callable[[str], None],
        state: _State,
        checkpoint: Callable[[], None] = lambda: None,
    ) -> None:
        self.call_id = call_id
        self.deliver = deliver
        self.state = state
        self.checkpoint = checkpoint
        self.lock = threading.Lock()  # the loop holds it while it updates the call
        self.wake = threading.Event()
        self.stopped = False
        self.finished = False
        self.cancelled = False
        self.error: ProviderError | None = None

    def run(self, adapter: ChatAdapter, request: ChatRequest) -> ProviderError | None:
        # Seconds of streaming need no database: the connection goes back to the pool for
        # other calls, and is taken again to checkpoint and to store the outcome.
        _give_back_pooled_connection()
        watcher = live.get_cancel_watcher()
        watcher.watch(cancel_key(self.call_id), self._cancel)
        task = relay.submit(self._read(adapter, request))
        try:
            in_time = self._wait(time.monotonic() + settings.BYOK_TURN_SOFT_LIMIT)
        finally:
            watcher.unwatch(cancel_key(self.call_id))
            with self.lock:
                self.stopped = True
        if self.finished:
            return self.error
        task.cancel()  # stopped or out of time: end the provider call now
        if self.cancelled:
            self.state.cancelled = True
            return None
        assert not in_time
        return ProviderError(ProviderErrorKind.TIMEOUT)

    def _wait(self, deadline: float) -> bool:
        """Wait for the end or a stop (True) or the deadline (False), saving the text so far
        every BYOK_TURN_CHECKPOINT_SECONDS meanwhile."""
        every = settings.BYOK_TURN_CHECKPOINT_SECONDS
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.wake.wait(min(left, every) if every > 0 else left):
                return True
            self.checkpoint()

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
                                self.deliver(event.text)
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
                logger.exception("provider stream crashed for call %s", self.call_id)
            error = ProviderError(ProviderErrorKind.BAD_RESPONSE)
        with self.lock:
            if not self.stopped:
                self.error = error
                self.finished = True
                self.wake.set()


# --- ending a call ----------------------------------------------------------------------------


class _LookUp:
    """The price is not known yet: `close` looks it up."""


LOOK_UP = _LookUp()


def close(
    call: Call,
    sink: Sink,
    outcome: Outcome,
    *,
    cipher: OwnerCipher | None = None,
    price: Price | _LookUp | None = LOOK_UP,
) -> bool:
    """End a call: the one way every call ends, on the worker or on the web (a call stopped
    before a worker took it, one the reaper fails).

    The sink stores the outcome and the usage is recorded in the same transaction, once
    (only a call still open on the sink's row is stored), settling its reservation at the
    real cost; then the sink publishes it, the key's last use is noted, and the reservation
    (if it was not settled) and the rate-limit slot are given back. Returns whether this
    call closed it: one that did not (the call was closed elsewhere, or a worker claimed it
    meanwhile) changes nothing, and gives nothing back.

    The outcome's text, error and final event are sealed with the owner's data key
    (`cipher`, when the caller has it open already). An ending without text still ends
    when that key does not open (the reaper must get past such a user): its error is then
    stored as its kind alone, and no final event is sent.
    """
    if cipher is None:
        try:
            cipher = OwnerCipher(call.owner)
        except VaultError:
            if outcome.text:
                raise
            logger.warning("call %s: the owner's data key does not open", call.call_id)
    if isinstance(price, _LookUp):
        price = price_for(call.choice.preset, call.model)
    with transaction.atomic():
        stored = sink.store(outcome, cipher)
        if stored:
            usage_record(turn=_usage(call, outcome, price))
    if stored:
        with _best_effort(f"call {call.call_id}: its final event"):
            sink.published(outcome, cipher)
        with _best_effort(f"call {call.call_id}: its key's last use"):
            if outcome.key is not None and outcome.provider_calls:
                provider_key_mark_used(key=outcome.key)  # the user does not wait for this
        with _best_effort(f"call {call.call_id}: giving back its slot and reservation"):
            _release(call)
    return stored


def _usage(call: Call, outcome: Outcome, price: Price | None) -> TurnUsage:
    key = outcome.key
    return TurnUsage(
        owner_id=call.owner.pk,
        message_id=call.call_id,
        conversation_id=call.group_id,
        key_id=key.pk if key else None,
        key_label=key.label if key else "",
        preset=key.preset if key else call.choice.preset,
        model=call.model,
        status=outcome.status,
        error_kind=outcome.error_kind,
        tokens=outcome.tokens or TokenCounts(input=0, output=0),
        reasoning_tokens=outcome.reasoning_tokens,
        ttft_ms=outcome.ttft_ms,
        latency_ms=outcome.latency_ms,
        price=price,
        estimated=outcome.estimated,
        purpose=call.purpose,
    )
