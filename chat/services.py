"""Conversation and turn writes (web side). The turn itself runs in chat.turns (worker)."""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from chat import streams, turns
from chat.branches import Tree, ends_short, joined_text, reply_parts
from chat.models import (
    MAX_OUTPUT_TOKENS_LIMIT,
    PURPOSE_MESSAGE,
    PURPOSE_SYSTEM,
    PURPOSE_TITLE,
    TEMPERATURE_MAX,
    Conversation,
    Message,
    ReasoningEffort,
    TitleSource,
)
from completion import admission, engine
from completion.engine import Outcome, Refused
from core.redis import get_redis
from keys.models import ProviderKey
from providers.catalog import PRESETS, model_reasoning, model_takes_temperature
from providers.reasoning import ReasoningStyle
from usage.prices import TokenCounts
from vault.services import OwnerCipher

logger = logging.getLogger(__name__)

Status = Message.Status
Role = Message.Role

TITLE_LENGTH = 60
TITLE_SOURCE_CHARS = 1000


class ChatError(Exception):
    """An expected failure with a message fit to show the user."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _enqueue_turn(message: Message) -> None:
    from chat.tasks import generate_reply

    message_id = str(message.pk)
    # robust: with the broker down the reply stays queued and the reaper tells the user
    # "no worker is available", instead of the send failing after the commit.
    transaction.on_commit(lambda: generate_reply.delay(message_id), robust=True)


def _check_key_and_model(owner: User, key: ProviderKey | None, model: str) -> str:
    """The rule for what a turn may run on: one of the owner's usable keys and a model id.
    Returns the model id, stripped; ChatError otherwise."""
    if key is None or key.owner_id != owner.pk:
        raise ChatError("Pick one of your keys.", field="key")
    if not key.is_usable:
        raise ChatError(
            f"“{key.label}” is {key.get_status_display().lower()}: pick another key.", field="key"
        )
    model = model.strip()
    if not model or len(model) > 200 or any(c.isspace() for c in model):
        raise ChatError("Choose a model, or type its id (no spaces).", field="model")
    return model


def conversation_create(
    *,
    owner: User,
    key: ProviderKey,
    model: str,
    system_prompt: str = "",
    temporary: bool = False,
) -> Conversation:
    """Start a conversation with one of the owner's keys and a model."""
    model = _check_key_and_model(owner, key, model)
    if len(system_prompt) > settings.BYOK_MAX_MESSAGE_CHARS:
        raise ChatError("The system prompt is too long.", field="system_prompt")
    conversation = Conversation(
        owner=owner,
        provider_key=key,
        preset=key.preset,
        base_url=key.base_url,
        model=model,
        temporary=temporary,
    )
    cipher = OwnerCipher(owner)
    conversation.sealed_system_prompt = cipher.seal(
        PURPOSE_SYSTEM, conversation.pk, system_prompt.strip()
    )
    conversation.save(force_insert=True)
    return conversation


# Markdown syntax a title leaves out (`_title_from`): what a line starts with, then inline.
_FENCE = re.compile(r"^\s{0,3}(?:`{3,}|~{3,})[^\n]*$", re.MULTILINE)
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$", re.MULTILINE)
_THEMATIC_BREAK = re.compile(r"^\s{0,3}(?:[-*_]\s*){3,}$", re.MULTILINE)
_LINE_MARKERS = re.compile(
    r"^\s*(?:>\s*)*(?:#{1,6}(?=\s|$)|[-*+](?=\s)|\d{1,9}[.)](?=\s))?\s*(?:\[[ xX]\]\s+)?",
    re.MULTILINE,
)
_SETEXT_RULE = re.compile(r"^\s{0,3}=+\s*$", re.MULTILINE)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]*)\](?:\([^)\n]*\)|\[[^\]\n]*\])")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS_STAR = re.compile(r"\*(?=\S)(.+?)(?<=\S)\*")
_EMPHASIS_UNDERSCORE = re.compile(r"(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_TABLE_PIPE = re.compile(r"\s*\|\s*")


def _title_from(text: str) -> str:
    """A conversation's title from its first message: plain text, Markdown syntax left out
    (fences and backticks, headings, quotes, list markers, emphasis, links and images as
    their text, table pipes and rules), whitespace collapsed, at most TITLE_LENGTH
    characters with an ellipsis. A message that is nothing but syntax keeps its text.
    Only the message's head is read: a title needs no more, and the patterns stay linear."""
    text = text[:TITLE_SOURCE_CHARS]
    plain = _FENCE.sub("", text)
    plain = _TABLE_RULE.sub("", plain)
    plain = _THEMATIC_BREAK.sub("", plain)
    plain = _SETEXT_RULE.sub("", plain)
    plain = _LINE_MARKERS.sub("", plain)
    plain = _IMAGE_OR_LINK.sub(r"\1", plain)
    plain = _AUTOLINK.sub(r"\1", plain)
    # Code spans keep their text as written: set aside while emphasis is taken out.
    spans: list[str] = []

    def set_aside(match: re.Match[str]) -> str:
        spans.append(match.group(2).strip())
        return f"\x00{len(spans) - 1}\x00"

    plain = _CODE_SPAN.sub(set_aside, plain.replace("\x00", ""))
    for _ in range(2):  # nested: ***both***, **_both_**
        plain = _STRONG.sub(r"\2", plain)
        plain = _EMPHASIS_STAR.sub(r"\1", plain)
        plain = _EMPHASIS_UNDERSCORE.sub(r"\1", plain)
        plain = _STRIKE.sub(r"\1", plain)
    plain = _TABLE_PIPE.sub(" ", plain)
    plain = re.sub("\x00(\\d+)\x00", lambda m: spans[int(m.group(1))], plain)
    line = " ".join(plain.split()) or " ".join(text.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    title = " ".join(title.split())
    if not title:
        raise ChatError("The title cannot be empty.", field="title")
    if len(title) > 200:
        raise ChatError("Keep the title under 200 characters.", field="title")
    conversation.sealed_title = OwnerCipher(conversation.owner).seal(
        PURPOSE_TITLE, conversation.pk, title
    )
    # The user's title: a title the model is writing (chat.titles) no longer replaces it.
    conversation.title_source = TitleSource.USER
    conversation.save(update_fields=["sealed_title", "title_source"])
    return conversation


def conversation_set_flags(
    *, conversation: Conversation, archived: bool | None = None, temporary: bool | None = None
) -> Conversation:
    fields = []
    if archived is not None:
        conversation.archived = archived
        fields.append("archived")
    if temporary is not None:
        conversation.temporary = temporary
        fields.append("temporary")
    if fields:
        conversation.save(update_fields=fields)
    return conversation


def conversation_settings_update(
    *,
    conversation: Conversation,
    system_prompt: str,
    temperature: float | None,
    max_output_tokens: int | None,
    reasoning_effort: str,
) -> Conversation:
    """Change what the conversation's next turns are sent: the system prompt (sealed), the
    temperature (0 to 2; None: the provider's default), the reply length limit (1 to
    MAX_OUTPUT_TOKENS_LIMIT tokens; None: BYOK_MAX_OUTPUT_TOKENS; the caps may still send
    less) and the reasoning effort (low / medium / high; blank: the model's default).

    Raises ChatError (naming the field) and changes nothing when a value is out of range or
    the conversation's model cannot take it (`conversation_model_options`): an effort for a
    model without one, a temperature for a model that takes none, or both at once for a
    Claude model (thinking does not combine with a temperature). Replies already written
    keep what they were sent.
    """
    system_prompt = system_prompt.strip()
    if len(system_prompt) > settings.BYOK_MAX_MESSAGE_CHARS:
        raise ChatError(
            f"The system prompt is {len(system_prompt):,} characters; the limit is "
            f"{settings.BYOK_MAX_MESSAGE_CHARS:,}.",
            field="system_prompt",
        )
    if temperature is not None:
        if (
            isinstance(temperature, bool)
            or not math.isfinite(temperature)
            or not 0 <= temperature <= TEMPERATURE_MAX
        ):
            raise ChatError("The temperature must be between 0 and 2.", field="temperature")
        temperature = round(float(temperature), 2)
    if max_output_tokens is not None and (
        isinstance(max_output_tokens, bool) or not 1 <= max_output_tokens <= MAX_OUTPUT_TOKENS_LIMIT
    ):
        raise ChatError(
            f"The reply length limit must be between 1 and {MAX_OUTPUT_TOKENS_LIMIT:,} tokens.",
            field="max_output_tokens",
        )
    if reasoning_effort not in {"", *ReasoningEffort.values}:
        raise ChatError(
            "Pick a reasoning effort of low, medium or high, or the default.",
            field="reasoning_effort",
        )
    options = conversation_model_options(conversation)
    if reasoning_effort and not options.has_reasoning_effort:
        raise ChatError(
            f"{conversation.model} has no reasoning effort setting; leave it on the default.",
            field="reasoning_effort",
        )
    if temperature is not None and not options.takes_temperature:
        raise ChatError(
            f"{conversation.model} only uses its own temperature; leave it blank.",
            field="temperature",
        )
    if temperature is not None and reasoning_effort and options.thinking_excludes_temperature:
        raise ChatError(
            f"{conversation.model} cannot use a temperature while it thinks: clear the "
            "temperature or leave the reasoning effort on the default.",
            field="temperature",
        )
    conversation.sealed_system_prompt = OwnerCipher(conversation.owner).seal(
        PURPOSE_SYSTEM, conversation.pk, system_prompt
    )
    conversation.temperature = temperature
    conversation.max_output_tokens = max_output_tokens
    conversation.reasoning_effort = reasoning_effort
    conversation.save(
        update_fields=[
            "sealed_system_prompt",
            "temperature",
            "max_output_tokens",
            "reasoning_effort",
        ]
    )
    return conversation


@dataclass(frozen=True)
class ModelOptions:
    """Which settings a conversation's model takes (`providers.reasoning`'s rule)."""

    has_reasoning_effort: bool
    takes_temperature: bool
    # Claude thinks when given an effort, and thinking refuses a temperature.
    thinking_excludes_temperature: bool


def conversation_model_options(conversation: Conversation) -> ModelOptions:
    """What the conversation's model takes; a preset nobody knows takes neither extra."""
    preset = PRESETS.get(conversation.preset)
    if preset is None:
        return ModelOptions(False, True, False)
    style = model_reasoning(preset, conversation.model)
    return ModelOptions(
        has_reasoning_effort=style is not ReasoningStyle.NONE,
        takes_temperature=model_takes_temperature(preset, conversation.model),
        thinking_excludes_temperature=style
        in (ReasoningStyle.ANTHROPIC_ADAPTIVE, ReasoningStyle.ANTHROPIC_BUDGET),
    )


def conversation_pin(*, conversation: Conversation, pinned: bool) -> Conversation:
    """Pin a conversation to the top of the sidebar, or unpin it."""
    if conversation.pinned != pinned:
        conversation.pinned = pinned
        conversation.save(update_fields=["pinned"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation; a reply still queued ends stopped (its slot given back, its
    usage booked), one being written is stopped by its worker."""
    pending = conversation.messages.filter(status__in=[Status.QUEUED, Status.RUNNING])
    for message in pending.select_related("conversation__provider_key", "owner"):
        stopped = message.status == Status.QUEUED and _close_unrun(
            message, Outcome(status=Status.STOPPED), open_status=Status.QUEUED
        )
        if not stopped:
            engine.request_cancel(message.pk)
    recent = _recent_replies(conversation.messages.all())
    conversation.delete()
    streams.streams_delete(recent)


def turn_streams_delete(*, owner: User) -> None:
    """Delete the owner's live turn streams (their account is going)."""
    streams.streams_delete(_recent_replies(Message.objects.for_owner(owner)))


def _recent_replies(messages: QuerySet[Message]) -> list[object]:
    """The ids of replies that may still have a stream in Redis (streams expire
    BYOK_TURN_STREAM_TTL after their last write, which is at most the turn's limit after
    it was created)."""
    since = timezone.now() - timedelta(
        seconds=settings.BYOK_TURN_STREAM_TTL + settings.BYOK_TURN_HARD_LIMIT
    )
    return list(
        messages.filter(role=Role.ASSISTANT, created_at__gte=since).values_list("pk", flat=True)
    )


@contextlib.contextmanager
def _admitted(owner: User) -> Iterator[Callable[[Conversation, uuid.UUID], None]]:
    """`admit` for a turn created in the block; if the block fails after admitting it (the
    turn is never queued), what admission took is given back."""
    taken: list[uuid.UUID] = []

    def admit(conversation: Conversation, reply_id: uuid.UUID) -> None:
        _admit(conversation, reply_id)
        taken.append(reply_id)

    try:
        yield admit
    except BaseException:
        for reply_id in taken:
            admission.release(owner=owner, call_id=reply_id)
        raise


def _admit(conversation: Conversation, reply_id: uuid.UUID) -> None:
    """Rate limits and spend caps, before a turn is created (`completion.admission`).
    Raises ChatError."""
    key = conversation.provider_key
    try:
        admission.admit(
            owner=conversation.owner,
            call_id=reply_id,
            key_id=key.pk if key else None,
            key_label=key.label if key else "",
        )
    except Refused as refused:
        raise ChatError(refused.message, field="text") from None


IN_FLIGHT = "A reply is still being written. Wait for it, or stop it."


def _clean_text(text: str) -> str:
    """A message's text as sent, or ChatError (empty, or over BYOK_MAX_MESSAGE_CHARS)."""
    text = text.strip()
    if not text:
        raise ChatError("Type a message first.", field="text")
    if len(text) > settings.BYOK_MAX_MESSAGE_CHARS:
        raise ChatError(
            f"That message is {len(text):,} characters; the limit is "
            f"{settings.BYOK_MAX_MESSAGE_CHARS:,}. Shorten it or split it.",
            field="text",
        )
    return text


def _lock_idle(conversation: Conversation, owner: User) -> Conversation:
    """The conversation locked for this transaction (serialising two tabs acting on it at
    once), or ChatError if one of its replies is still in flight: one turn at a time."""
    locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
    locked.owner = owner
    if locked.messages.filter(status__in=[Status.QUEUED, Status.RUNNING]).exists():
        raise ChatError(IN_FLIGHT, field="text")
    return locked


def _check_in(conversation: Conversation, message: Message) -> None:
    """SECURITY: a message named alongside a conversation must be one of its own."""
    if message.conversation_id != conversation.pk or message.owner_id != conversation.owner_id:
        raise ChatError("That message is not part of this conversation.")


def _queue_reply(
    locked: Conversation, *, parent: Message, reply_id: uuid.UUID, created_at: datetime
) -> Message:
    """A queued reply under `parent`, made the conversation's active leaf; the turn is
    queued on commit."""
    reply = Message.objects.create(
        id=reply_id,
        conversation=locked,
        owner=locked.owner,
        parent=parent,
        role=Role.ASSISTANT,
        status=Status.QUEUED,
        model=locked.model,
        created_at=created_at,
    )
    locked.active_leaf = reply
    locked.last_message_at = timezone.now()
    _enqueue_turn(reply)
    return reply


def _user_message(
    locked: Conversation, *, parent: Message | None, text: str, cipher: OwnerCipher
) -> Message:
    message = Message(
        conversation=locked,
        owner=locked.owner,
        parent=parent,
        role=Role.USER,
        status=Status.DONE,
        created_at=timezone.now(),
    )
    message.sealed_content = cipher.seal(PURPOSE_MESSAGE, message.pk, text)
    message.save(force_insert=True)
    return message


def _cipher_for(owner: User, cipher: OwnerCipher | None) -> OwnerCipher:
    if cipher is None or cipher.owner_id != str(owner.pk):
        return OwnerCipher(owner)
    return cipher


def conversation_start(
    *,
    owner: User,
    key: ProviderKey,
    model: str,
    text: str,
    system_prompt: str = "",
    temporary: bool = False,
    cipher: OwnerCipher | None = None,
) -> tuple[Message, Message]:
    """A new conversation with its first message and queued reply, all or nothing: a
    message that is refused (a cap, a rate limit, bad text) leaves no empty conversation."""
    with transaction.atomic():
        conversation = conversation_create(
            owner=owner, key=key, model=model, system_prompt=system_prompt, temporary=temporary
        )
        return message_send(conversation=conversation, text=text, cipher=cipher)


def _switch(locked: Conversation, key: ProviderKey | None, model: str | None) -> None:
    """The key and model the conversation's next turns run on (the turn's admission and
    fallback follow the new key's provider and server). Unchanged when both are None."""
    if key is None and model is None:
        return
    key = key if key is not None else locked.provider_key
    model = _check_key_and_model(locked.owner, key, model if model is not None else locked.model)
    assert key is not None
    if key.pk == locked.provider_key_id and model == locked.model:
        return
    locked.provider_key, locked.model = key, model
    locked.preset, locked.base_url = key.preset, key.base_url
    locked.save(update_fields=["provider_key", "model", "preset", "base_url"])


def message_send(
    *,
    conversation: Conversation,
    text: str,
    cipher: OwnerCipher | None = None,
    key: ProviderKey | None = None,
    model: str | None = None,
) -> tuple[Message, Message]:
    """Add the user's message at the end of the active branch and a queued reply, and queue
    the turn (on commit). With `key` or `model`, the conversation switches to them first
    (ChatError for another user's key or one that is revoked or expired).

    One transaction: either both messages exist and the task is queued, or nothing changed.
    `cipher` is the owner's, if the caller has opened it already.
    """
    text = _clean_text(text)
    owner = conversation.owner
    with _admitted(owner) as admit, transaction.atomic():
        locked = _lock_idle(conversation, owner)
        _switch(locked, key, model)
        reply_id = uuid.uuid4()
        admit(locked, reply_id)
        cipher = _cipher_for(owner, cipher)
        leaf_id = Tree.of(locked.pk).leaf(locked)
        parent = Message.objects.get(pk=leaf_id) if leaf_id is not None else None
        user_message = _user_message(locked, parent=parent, text=text, cipher=cipher)
        reply = _queue_reply(
            locked,
            parent=user_message,
            reply_id=reply_id,
            created_at=user_message.created_at + timedelta(microseconds=1),
        )
        update = ["last_message_at", "active_leaf"]
        if not locked.sealed_title:
            locked.sealed_title = cipher.seal(PURPOSE_TITLE, locked.pk, _title_from(text))
            update.append("sealed_title")
        locked.save(update_fields=update)
    return user_message, reply


def message_edit(
    *,
    conversation: Conversation,
    message: Message,
    text: str,
    cipher: OwnerCipher | None = None,
) -> tuple[Message, Message]:
    """Edit a sent user message: a new branch. The new text is a sibling of `message` (same
    parent) with a queued reply of its own, and becomes the active branch; the old branch
    stays, one version back.

    Returns the new user message and its reply. Nothing changes on ChatError.
    """
    _check_in(conversation, message)
    if message.role != Role.USER:
        raise ChatError("Only your own messages can be edited; regenerate a reply instead.")
    text = _clean_text(text)
    owner = conversation.owner
    with _admitted(owner) as admit, transaction.atomic():
        locked = _lock_idle(conversation, owner)
        reply_id = uuid.uuid4()
        admit(locked, reply_id)
        cipher = _cipher_for(owner, cipher)
        edited = _user_message(locked, parent=message.parent, text=text, cipher=cipher)
        reply = _queue_reply(
            locked,
            parent=edited,
            reply_id=reply_id,
            created_at=edited.created_at + timedelta(microseconds=1),
        )
        locked.save(update_fields=["last_message_at", "active_leaf"])
    return edited, reply


def branch_switch(*, conversation: Conversation, message: Message, version: int) -> Message:
    """Show another version of `message`'s turn: version `version` (1 is the oldest) of its
    siblings, and below it the newest leaf (following the most recent child down).

    Returns the conversation's new active leaf. ChatError (nothing changed) for a version
    that does not exist, or while a reply is in flight.
    """
    _check_in(conversation, message)
    with transaction.atomic():
        locked = _lock_idle(conversation, conversation.owner)
        tree = Tree.of(locked.pk)
        siblings = tree.siblings(message.pk)
        if not 1 <= version <= len(siblings):
            raise ChatError(
                f"There is no version {version} of this message; it has {len(siblings)}."
            )
        leaf = Message.objects.get(pk=tree.newest_leaf(siblings[version - 1]))
        locked.active_leaf = leaf
        locked.save(update_fields=["active_leaf"])
    return leaf


def _close_unrun(
    message: Message, outcome: Outcome, *, open_status: str, cipher: OwnerCipher | None = None
) -> bool:
    """End a turn its worker will not finish, through the engine's one way of ending a call:
    the outcome's tokens booked (none, or the estimate of the text its worker saved), slot
    and reservation given back, the final event sent."""
    message.conversation.owner = message.owner
    outcome.key = message.conversation.provider_key
    turn = turns.ChatTurn(message.pk, reply=message, open_status=open_status, on_worker=False)
    return engine.close(turns.turn_call(message), turn, outcome, cipher=cipher)


def turn_cancel(*, message: Message) -> Message:
    """Stop a reply. A queued one stops at once; a running one within a second (worker
    side), or at once with the text saved so far when no worker holds it any more (its
    lease expired: the worker died)."""
    if message.role != Role.ASSISTANT or message.is_final:
        return message
    pending = Message.objects.select_related("conversation__provider_key", "owner").filter(
        pk=message.pk
    )
    queued = pending.filter(status=Status.QUEUED).first()
    if queued is None or not _close_unrun(
        queued, Outcome(status=Status.STOPPED), open_status=Status.QUEUED
    ):
        engine.request_cancel(message.pk)  # a worker has it (or is about to)
        running = pending.filter(status=Status.RUNNING).first()
        if running is not None and engine.lease_lost(running.pk):
            _end_lost(running, Status.STOPPED, open_status=Status.RUNNING)
    message.refresh_from_db()
    return message


def turn_regenerate(*, message: Message) -> Message:
    """A new reply to the same user message as `message` (a finished reply anywhere in the
    conversation); `message` stays as the previous version. The new reply becomes the
    active branch's leaf."""
    if message.role != Role.ASSISTANT:
        raise ChatError("Only a reply can be regenerated.")
    with _admitted(message.owner) as admit, transaction.atomic():
        locked = _lock_idle(message.conversation, message.owner)
        question = reply_parts(message)[0].parent  # a continued reply is regenerated whole
        if question is None:
            raise ChatError("This reply answers no message; send a new one instead.")
        reply_id = uuid.uuid4()
        admit(locked, reply_id)
        reply = _queue_reply(locked, parent=question, reply_id=reply_id, created_at=timezone.now())
        locked.save(update_fields=["last_message_at", "active_leaf"])
    return reply


def turn_continue(*, message: Message, cipher: OwnerCipher | None = None) -> Message:
    """Carry on a reply that ended short (stopped, or done at the length limit): a new
    reply under it, queued, which the model writes on from where it ended and the page
    shows joined to it (`chat.branches`). It is a provider call of its own: its own usage
    event, admitted like a send (caps, limits, one reply in flight per conversation).

    Only the end of the active branch can be continued, and only if it has text. Raises
    ChatError, nothing changed, for a reply that is complete, failed, in flight or empty.
    """
    if message.role != Role.ASSISTANT:
        raise ChatError("Only a reply can be continued.")
    owner = message.owner
    with _admitted(owner) as admit, transaction.atomic():
        locked = _lock_idle(message.conversation, owner)
        current = Message.objects.get(pk=message.pk)  # as it is now, under the lock
        if current.status == Status.ERROR:
            raise ChatError("This reply failed, so it cannot be continued; retry it instead.")
        if not ends_short(current):
            raise ChatError(
                "This reply is complete. Only a reply that was stopped or cut off at the "
                "length limit can be continued."
            )
        tree = Tree.of(locked.pk)
        if tree.leaf(locked) != current.pk:
            raise ChatError("Only the last reply of the conversation can be continued.")
        cipher = _cipher_for(owner, cipher)
        parts = reply_parts(current, tree)
        texts = [cipher.open(PURPOSE_MESSAGE, part.pk, part.sealed_content) for part in parts]
        if not joined_text(texts).strip():
            raise ChatError("This reply has no text to continue; regenerate it instead.")
        reply_id = uuid.uuid4()
        admit(locked, reply_id)
        reply = _queue_reply(locked, parent=current, reply_id=reply_id, created_at=timezone.now())
        locked.save(update_fields=["last_message_at", "active_leaf"])
    return reply


WORKER_LOST = "The worker writing this reply stopped before finishing."
NO_WORKER = (
    "No worker picked up this message, even after it was queued again: the task queue may "
    "have lost it (for example, Redis restarted without saving its data), or no worker is "
    "running. Retry to send it again."
)


def turns_reap() -> int:
    """End turns nobody will finish, and queue again those the broker may have lost.

    - A running turn whose lease stayed expired (its worker died; `engine.lease_held`) is
      ended as failed with the text its worker saved, within about three leases. The lease
      must be found missing on two sweeps half a lease apart, so a Redis that restarted
      (and lost every lease until the workers renew them) ends nothing.
    - A running turn past the hard time limit and the store's retry time (a worker that
      hangs) ends the same way.
    - A queued turn no worker claimed for half of BYOK_QUEUED_TURN_TIMEOUT is queued once
      more (the claim still makes one provider call of two deliveries); still unclaimed
      half a timeout later, it fails saying so.
    Returns how many turns it ended.
    """
    now = timezone.now()
    ended = 0
    running = Message.objects.select_related("conversation__provider_key", "owner").filter(
        status=Status.RUNNING
    )
    # Past the hard limit, and past the time a worker may keep retrying to store it.
    hung_before = now - timedelta(
        seconds=settings.BYOK_TURN_HARD_LIMIT + settings.BYOK_TURN_STORE_RETRY_SECONDS + 30
    )
    lost = _lost_turns(
        list(Message.objects.filter(status=Status.RUNNING).only("id", "started_at")),
        hung_before=hung_before,
    )
    for message in running.filter(pk__in=lost):
        ended += _end_safely(message, Status.ERROR, open_status=Status.RUNNING)

    half = timedelta(seconds=settings.BYOK_QUEUED_TURN_TIMEOUT / 2)
    queued = Message.objects.filter(status=Status.QUEUED)
    for message in queued.filter(requeued_at=None, created_at__lt=now - half):
        if queued.filter(pk=message.pk, requeued_at=None).update(requeued_at=now):
            logger.warning("turn %s: no worker claimed it; queued again", message.pk)
            _enqueue_turn(message)
    unclaimed = queued.select_related("conversation__provider_key", "owner").filter(
        requeued_at__lt=now - half
    )
    for message in unclaimed:
        outcome = Outcome(status=Status.ERROR, error_kind="no_worker", error_message=NO_WORKER)
        try:
            ended += _close_unrun(message, outcome, open_status=Status.QUEUED)
        except Exception:  # one turn that cannot be ended must not stop the others
            logger.exception("the reaper could not end turn %s", message.pk)
    return ended


def _lost_turns(running: list[Message], *, hung_before: datetime) -> list[object]:
    """The running turns no worker holds any more (see `turns_reap`)."""
    lost: list[object] = [
        m.pk for m in running if m.started_at is not None and m.started_at < hung_before
    ]
    if not running:
        return lost
    client = get_redis()
    now = time.time()
    gap = settings.BYOK_TURN_LEASE_SECONDS / 2
    try:
        pipe = client.pipeline(transaction=False)
        for message in running:
            pipe.exists(engine.lease_key(message.pk))
            pipe.get(_lease_lost_key(message.pk))
        answers = pipe.execute()
        pipe = client.pipeline(transaction=False)
        for index, message in enumerate(running):
            held, missing_since = answers[2 * index], answers[2 * index + 1]
            marker = _lease_lost_key(message.pk)
            if held:
                if missing_since is not None:
                    pipe.delete(marker)
            elif missing_since is None:
                pipe.set(marker, str(now), nx=True, ex=settings.BYOK_TURN_LEASE_SECONDS * 10)
            elif now - float(missing_since) >= gap:
                lost.append(message.pk)
        pipe.execute()
    except redis.RedisError:
        logger.warning("the reaper could not read turn leases; trying again next time")
    return lost


def _lease_lost_key(message_id: object) -> str:
    return f"byok:call:{message_id}:lease-lost"


def _end_safely(message: Message, status: str, *, open_status: str) -> int:
    try:
        return int(_end_lost(message, status, open_status=open_status))
    except Exception:  # one turn that cannot be ended must not stop the others
        logger.exception("the reaper could not end turn %s", message.pk)
        return 0


def _end_lost(message: Message, status: str, *, open_status: str) -> bool:
    """End a running turn its worker will not finish, with the text the user saw: its
    stream's (the exact text shown), or its worker's last checkpoint when Redis has no
    stream; billed as an estimate. Stopped, when the user pressed Stop; failed otherwise."""
    cipher = OwnerCipher(message.owner)
    saved = cipher.open(PURPOSE_MESSAGE, message.pk, message.sealed_content)
    shown = streams.streamed_text(cipher, message.pk)
    text = shown if len(shown) > len(saved) else saved
    tokens = None
    if text:
        tokens = TokenCounts(
            input=message.input_tokens or 0,
            output=max(1, len(text) // engine.CHARS_PER_TOKEN_ESTIMATED),
        )
    outcome = Outcome(status=status, text=text, tokens=tokens, estimated=tokens is not None)
    if status == Status.ERROR:
        outcome.error_kind = "worker_lost"
        outcome.error_message = (
            f"{WORKER_LOST} What arrived is kept; retry to try again."
            if text
            else f"{WORKER_LOST} Retry to try again."
        )
    else:
        outcome.notices = ["The worker writing this reply had stopped; what arrived is kept."]
    return _close_unrun(message, outcome, open_status=open_status, cipher=cipher)


def conversations_purge_temporary() -> int:
    """Delete temporary conversations 24 hours after their last message."""
    cutoff = timezone.now() - timedelta(hours=24)
    stale = Conversation.objects.filter(temporary=True, last_message_at__lt=cutoff)
    count = stale.count()
    stale.delete()
    return count
