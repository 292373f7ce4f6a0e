"""A chat turn on the completion engine: the reply's row is the call's record, its Redis
stream the live view of it.

`ChatTurn` is the engine's sink for one assistant message: it claims the reply, builds the
prompt from the conversation (sealed history, system prompt, trimmed to fit), hands deltas
to the turn's stream, stores the outcome on the message (sealed) and publishes the final
event with the rendered reply. Everything about keys, retries, money and usage is the
engine's (`completion.engine`).
"""

from __future__ import annotations

import logging
import uuid

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from chat import streams
from chat.branches import Tree, is_continuation, joined_text
from chat.models import PURPOSE_ERROR, PURPOSE_MESSAGE, Conversation, Message
from chat.rendering import error_link, render_markdown, sent_facts, turn_facts
from chat.selectors import conversation_system_prompt, reply_view
from completion import engine
from completion.engine import Call, KeyChoice, Outcome, Prompt, Refused
from providers import continuation
from providers.catalog import PRESETS, model_takes_prefill
from providers.errors import ProviderErrorKind
from providers.types import ChatMessage, Role
from usage.prices import TokenCounts
from vault.services import OwnerCipher

logger = logging.getLogger(__name__)

Status = Message.Status

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
# The engine's own refusals and the web's endings (reaper, stop before start).
_ACTION_FOR_KIND = {
    "internal": "retry",
    "no_key": "keys",
    "budget": "usage",
    "worker_lost": "retry",
    "no_worker": "retry",
}


def build_history(reply: Message, cipher: OwnerCipher) -> tuple[list[ChatMessage], int]:
    """The branch before `reply` (its ancestors: other versions and branches are not part
    of its context), oldest turns dropped to fit BYOK_CONTEXT_MAX_CHARS.

    Failed and empty replies are left out; a reply written in parts (it was continued) is
    one assistant message, its parts joined (`chat.branches.joined_text`). When `reply`
    continues a reply, the history ends with that reply, which is never dropped, nor the
    message it answers. Returns the messages and how many were dropped.
    """
    ancestors = Tree.of(reply.conversation_id).path_to(reply.pk)[:-1]
    rows = Message.objects.filter(
        pk__in=ancestors, status__in=[Status.DONE, Status.STOPPED]
    ).in_bulk()
    earlier = [rows[pk] for pk in ancestors if pk in rows]
    history: list[ChatMessage] = []
    parts: list[str] = []  # the texts of the reply being joined, while there is one
    previous: Message | None = None
    for message in earlier:
        text = cipher.open(PURPOSE_MESSAGE, message.pk, message.sealed_content)
        joins = (
            bool(parts)
            and previous is not None
            and message.parent_id == previous.pk
            and is_continuation(message.role, previous.role)
        )
        if joins:
            if text:
                parts.append(text)
                history[-1] = ChatMessage(Role.ASSISTANT, joined_text(parts))
        elif text:
            role = Role.USER if message.role == Message.Role.USER else Role.ASSISTANT
            history.append(ChatMessage(role, text))
            parts = [text] if role == Role.ASSISTANT else []
        else:
            parts = []  # an empty message is left out, and ends the reply before it
        previous = message
    continuing = (
        bool(earlier)
        and earlier[-1].pk == reply.parent_id
        and is_continuation(reply.role, earlier[-1].role)
    )
    keep = 2 if continuing else 1
    budget = settings.BYOK_CONTEXT_MAX_CHARS
    dropped = 0
    while len(history) > keep and sum(len(m.content) for m in history) > budget:
        history.pop(0)
        dropped += 1
    # Providers want the conversation to start with the user.
    while len(history) > keep and history[0].role != Role.USER:
        history.pop(0)
        dropped += 1
    return history, dropped


def continuation_messages(
    history: list[ChatMessage], conversation: Conversation
) -> list[ChatMessage]:
    """The request for the rest of the reply `history` ends with, as the conversation's
    model takes it (`providers.continuation`): a prefill for the Anthropic models that take
    one, else the reply so far and a user message asking for the rest. The reply so far is
    sent without trailing whitespace, which the parts' join puts back unless the
    continuation starts with its own (`chat.branches.joined_text`)."""
    preset = PRESETS.get(conversation.preset)
    effort = conversation.reasoning_effort or None
    prefill = preset is not None and model_takes_prefill(preset, conversation.model, effort)
    return continuation.continuation_messages(history, prefill=prefill)


def _turn_replies() -> QuerySet[Message]:
    """A claimed reply with what its turn reads of it: the conversation and the owner."""
    return Message.objects.select_related("conversation", "owner")


def warm_up() -> None:
    """Do at worker start what the first turn would otherwise wait for: the engine's (the
    relay loop's provider sessions), the claimed reply's query, the Markdown renderer.
    Opens no database connection and calls nobody."""
    engine.warm_up()
    str(_turn_replies().filter(pk=uuid.UUID(int=0)).query)
    render_markdown("*ready*")


def run_turn(message_id: str) -> None:
    """Claim and run one turn. Safe to call twice: only the first call does anything."""
    engine.run(ChatTurn(message_id))


def turn_call(reply: Message) -> Call:
    """The engine's call for a reply (its conversation and owner loaded), with the
    conversation's settings: its length limit (or BYOK_MAX_OUTPUT_TOKENS), which the caps may
    lower, its temperature and reasoning effort."""
    conversation: Conversation = reply.conversation
    return Call(
        call_id=reply.pk,
        owner=reply.owner,
        choice=KeyChoice(
            preset=conversation.preset,
            base_url=conversation.base_url or None,
            key_id=conversation.provider_key_id,
        ),
        model=conversation.model,
        max_output_tokens=conversation.max_output_tokens or settings.BYOK_MAX_OUTPUT_TOKENS,
        group_id=conversation.pk,
        temperature=conversation.temperature,
        reasoning_effort=conversation.reasoning_effort or None,
    )


class ChatTurn:
    """The engine's sink for one reply. `open_status` is the status the reply must still
    have for an outcome to be stored (running, on the worker; queued, when the web stops a
    turn no worker took)."""

    def __init__(
        self,
        message_id: uuid.UUID | str,
        *,
        reply: Message | None = None,
        open_status: str = Status.RUNNING,
        on_worker: bool = True,
    ) -> None:
        self.message_id = message_id
        self.reply = reply
        self.open_status = open_status
        # False for the web's and the reaper's endings: they know nothing of the reply's
        # key or timings, so they leave those columns as they are (and its text, unless
        # they bring the text of a lost worker's turn).
        self.on_worker = on_worker
        self.publisher = streams.TurnPublisher(message_id)

    # -- the engine's sink ---------------------------------------------------------------

    def claim(self) -> Call | None:
        claimed = Message.objects.filter(pk=self.message_id, status=Status.QUEUED).update(
            status=Status.RUNNING, started_at=timezone.now()
        )
        if not claimed:
            return None
        reply = self.reply = _turn_replies().get(pk=self.message_id)
        reply.conversation.owner = reply.owner  # the same user: no second query for it
        return turn_call(reply)

    def prompt(self, cipher: OwnerCipher) -> Prompt:
        reply = self._reply()
        history, dropped = build_history(reply, cipher)
        if not history:
            raise Refused("bad_request", "There is no message to answer.")
        if history[-1].role == Role.ASSISTANT:  # only a continuation ends with a reply
            history = continuation_messages(history, reply.conversation)
        notices: tuple[str, ...] = ()
        if dropped:
            notices = (
                f"The {dropped} oldest message{'s' if dropped != 1 else ''} of this "
                "conversation were left out to fit the model's context.",
            )
        self.publisher.cipher = cipher  # the turn's stream is sealed with the owner's key
        system_prompt = conversation_system_prompt(reply.conversation, cipher) or None
        return Prompt(messages=history, system_prompt=system_prompt, notices=notices)

    def delta(self, text: str) -> None:
        self.publisher.delta(text)

    def checkpoint(self, text: str, tokens: TokenCounts, cipher: OwnerCipher) -> None:
        reply = self._reply()
        Message.objects.filter(pk=reply.pk, status=Status.RUNNING).update(
            sealed_content=cipher.seal(PURPOSE_MESSAGE, reply.pk, text),
            input_tokens=tokens.input,
            output_tokens=tokens.output,
            tokens_estimated=True,
        )

    def store(self, outcome: Outcome, cipher: OwnerCipher | None) -> bool:
        reply = self._reply()
        values: dict[str, object] = {"status": outcome.status, "finished_at": timezone.now()}
        if self.on_worker:
            tokens = outcome.tokens
            values.update(
                sealed_content=cipher.seal(PURPOSE_MESSAGE, reply.pk, outcome.text)
                if cipher is not None
                else b"",
                provider_calls=outcome.provider_calls,
                provider_key=outcome.key if outcome.provider_calls else None,
                notice=_notice(outcome)[:500],
                ttft_ms=outcome.ttft_ms,
                latency_ms=outcome.latency_ms,
                finish_reason=outcome.finish_reason,
                **_sent_values(outcome),
            )
            if tokens is not None:
                values.update(
                    input_tokens=tokens.input,
                    output_tokens=tokens.output,
                    cached_tokens=tokens.cached,
                    reasoning_tokens=outcome.reasoning_tokens,
                    tokens_estimated=outcome.estimated,
                )
        else:
            # An ending from the web or the reaper. One of a lost worker's turn brings the
            # text the user saw (its stream, or its last checkpoint) and its estimate.
            if outcome.text and cipher is not None:
                values["sealed_content"] = cipher.seal(PURPOSE_MESSAGE, reply.pk, outcome.text)
            if outcome.tokens is not None:
                values.update(
                    input_tokens=outcome.tokens.input,
                    output_tokens=outcome.tokens.output,
                    tokens_estimated=outcome.estimated,
                )
            if outcome.notices:
                values["notice"] = _notice(outcome)[:500]
        if outcome.status == Status.ERROR:
            message, _ = _error_display(outcome)
            values.update(
                error_kind=outcome.error_kind[:32],
                sealed_error=cipher.seal(PURPOSE_ERROR, reply.pk, message[:500])
                if cipher is not None
                else b"",  # the owner's data key does not open: the kind says what happened
            )
        return bool(Message.objects.filter(pk=reply.pk, status=self.open_status).update(**values))

    def published(self, outcome: Outcome, cipher: OwnerCipher | None) -> None:
        if self.publisher.cipher is None:
            self.publisher.cipher = cipher
        html, facts = self._shown(outcome, cipher)
        if outcome.status == Status.ERROR:
            message, action = _error_display(outcome)
            facts = {**facts, "link": error_link(outcome.error_kind)}
            self.publisher.error(message=message, action=action, html=html, facts=facts)
        else:
            self.publisher.done(
                status=outcome.status, html=html, notice=_notice(outcome), facts=facts
            )

    def _reply(self) -> Message:
        assert self.reply is not None, "claim the turn first"
        return self.reply

    def _shown(self, outcome: Outcome, cipher: OwnerCipher | None) -> tuple[str, dict[str, str]]:
        """The final event's HTML and small print: what a reload shows (the reply as stored,
        its continued parts joined, its cost from the usage ledger, whether it can be
        continued), or the outcome's own when that cannot be read."""
        if cipher is not None:
            try:
                stored = Message.objects.select_related(
                    "conversation", "owner", "provider_key"
                ).get(pk=self.message_id)
                view = reply_view(stored, cipher)
            except Exception:  # the event must still go out
                logger.warning(
                    "turn %s: its stored view could not be read", self.message_id, exc_info=True
                )
            else:
                return view.html, {**view.facts, "continuable": "1" if view.continuable else ""}
        html = render_markdown(outcome.text) if outcome.text else ""
        return html, {**_facts(outcome), "continuable": ""}


def _sent_values(outcome: Outcome) -> dict[str, object]:
    """The reply's record of what its provider request was sent (nothing was: all empty)."""
    sent = outcome.sent
    if sent is None or not outcome.provider_calls:
        return {"temperature": None, "max_output_tokens": None, "reasoning_effort": ""}
    return {
        "temperature": sent.temperature,
        "max_output_tokens": sent.max_tokens,
        "reasoning_effort": sent.effort.value if sent.effort else "",
    }


def _notice(outcome: Outcome) -> str:
    notices = list(outcome.notices)
    if outcome.cut_off_by_length:
        notices.append("The reply reached the length limit and was cut short.")
    return " ".join(notices)


def _error_display(outcome: Outcome) -> tuple[str, str]:
    """A failed reply's message, and the action the page offers next to it."""
    text = outcome.error_message
    error = outcome.error
    if error is not None:
        if outcome.text:
            failed = engine.what_failed(error)
            text = f"The reply was cut off: {failed[0].lower()}{failed[1:]} What arrived is kept."
            text = f"{text} {engine.when_to_retry(error)}".strip()
        action = _ACTIONS.get(error.kind, "")
        if engine.when_to_retry(error):
            action = ""  # the message says when to try again already
    else:
        action = _ACTION_FOR_KIND.get(outcome.error_kind, "")
    message = text if not action or action in ACTION_CODES else f"{text} {action}"
    return message, action


def _facts(outcome: Outcome) -> dict[str, str]:
    """The reply's small print as stored (see `ChatTurn.store`), for its final event."""
    tokens = outcome.tokens
    used = outcome.key if outcome.provider_calls else None
    return turn_facts(
        key_label=used.label if used is not None else "",
        input_tokens=tokens.input if tokens else None,
        output_tokens=tokens.output if tokens else None,
        ttft_ms=outcome.ttft_ms,
        estimated=outcome.estimated,
        **sent_facts(_sent_values(outcome)),
    )
