"""Conversation and turn writes (web side). The turn itself runs in chat.turns (worker)."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from chat import turns
from chat.models import PURPOSE_MESSAGE, PURPOSE_SYSTEM, PURPOSE_TITLE, Conversation, Message
from completion import admission, engine
from completion.engine import Outcome, Refused
from keys.models import ProviderKey
from vault.services import OwnerCipher

logger = logging.getLogger(__name__)

Status = Message.Status
Role = Message.Role

TITLE_LENGTH = 60


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


def conversation_create(
    *,
    owner: User,
    key: ProviderKey,
    model: str,
    system_prompt: str = "",
    temporary: bool = False,
) -> Conversation:
    """Start a conversation with one of the owner's keys and a model."""
    if key.owner_id != owner.pk:
        raise ChatError("Pick one of your keys.", field="key")
    if not key.is_usable:
        raise ChatError(f"“{key.label}” is {key.get_status_display().lower()}.", field="key")
    model = model.strip()
    if not model or len(model) > 200 or any(c.isspace() for c in model):
        raise ChatError("Choose a model, or type its id (no spaces).", field="model")
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


def _title_from(text: str) -> str:
    line = " ".join(text.split())
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
    conversation.save(update_fields=["sealed_title"])
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
    conversation.delete()


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


def message_send(
    *, conversation: Conversation, text: str, cipher: OwnerCipher | None = None
) -> tuple[Message, Message]:
    """Add the user's message and a queued reply, and queue the turn (on commit).

    One transaction: either both messages exist and the task is queued, or nothing changed.
    `cipher` is the owner's, if the caller has opened it already.
    """
    text = text.strip()
    if not text:
        raise ChatError("Type a message first.", field="text")
    if len(text) > settings.BYOK_MAX_MESSAGE_CHARS:
        raise ChatError(
            f"That message is {len(text):,} characters; the limit is "
            f"{settings.BYOK_MAX_MESSAGE_CHARS:,}. Shorten it or split it.",
            field="text",
        )
    owner = conversation.owner
    with _admitted(owner) as admit, transaction.atomic():
        # Serialises two tabs sending into the same conversation at once.
        locked = Conversation.objects.select_for_update().get(pk=conversation.pk)
        locked.owner = owner
        if locked.messages.filter(status__in=[Status.QUEUED, Status.RUNNING]).exists():
            raise ChatError(
                "A reply is still being written. Wait for it, or stop it.", field="text"
            )
        reply_id = uuid.uuid4()
        admit(locked, reply_id)
        if cipher is None or cipher.owner_id != str(owner.pk):
            cipher = OwnerCipher(owner)
        now = timezone.now()
        user_message = Message(
            conversation=locked, owner=owner, role=Role.USER, status=Status.DONE, created_at=now
        )
        user_message.sealed_content = cipher.seal(PURPOSE_MESSAGE, user_message.pk, text)
        user_message.save(force_insert=True)
        reply = Message.objects.create(
            id=reply_id,
            conversation=locked,
            owner=owner,
            role=Role.ASSISTANT,
            status=Status.QUEUED,
            model=locked.model,
            created_at=now + timedelta(microseconds=1),
        )
        update = ["last_message_at"]
        locked.last_message_at = now
        if not locked.sealed_title:
            locked.sealed_title = cipher.seal(PURPOSE_TITLE, locked.pk, _title_from(text))
            update.append("sealed_title")
        locked.save(update_fields=update)
        _enqueue_turn(reply)
    return user_message, reply


def _close_unrun(message: Message, outcome: Outcome, *, open_status: str) -> bool:
    """End a turn its worker will not finish, through the engine's one way of ending a call:
    zero tokens booked, slot and reservation given back, the final event sent."""
    message.conversation.owner = message.owner
    outcome.key = message.conversation.provider_key
    turn = turns.ChatTurn(message.pk, reply=message, open_status=open_status, on_worker=False)
    return engine.close(turns.turn_call(message), turn, outcome)


def turn_cancel(*, message: Message) -> Message:
    """Stop a reply. A queued one stops at once; a running one within a second (worker side)."""
    if message.role != Role.ASSISTANT or message.is_final:
        return message
    queued = (
        Message.objects.select_related("conversation__provider_key", "owner")
        .filter(pk=message.pk, status=Status.QUEUED)
        .first()
    )
    if queued is None or not _close_unrun(
        queued, Outcome(status=Status.STOPPED), open_status=Status.QUEUED
    ):
        engine.request_cancel(message.pk)  # a worker has it (or is about to)
    message.refresh_from_db()
    return message


def turn_regenerate(*, message: Message) -> Message:
    """Replace the conversation's last reply (failed, stopped or done) with a new one."""
    if message.role != Role.ASSISTANT:
        raise ChatError("Only a reply can be regenerated.")
    with _admitted(message.owner) as admit, transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=message.conversation_id)
        last = conversation.messages.order_by("-created_at", "-id").first()
        if last is None or last.pk != message.pk:
            raise ChatError("Only the last reply can be retried or regenerated.")
        if not message.is_final:
            raise ChatError("This reply is still being written.")
        reply_id = uuid.uuid4()
        admit(conversation, reply_id)
        created = message.created_at
        message.delete()
        reply = Message.objects.create(
            id=reply_id,
            conversation=conversation,
            owner=conversation.owner,
            role=Role.ASSISTANT,
            status=Status.QUEUED,
            model=conversation.model,
            created_at=created,
        )
        conversation.last_message_at = timezone.now()
        conversation.save(update_fields=["last_message_at"])
        _enqueue_turn(reply)
    return reply


def turns_reap() -> int:
    """Fail turns nobody will finish: running past the hard time limit (the worker died), or
    queued for longer than BYOK_QUEUED_TURN_TIMEOUT (no worker took them)."""
    now = timezone.now()
    reaped = 0
    running_cutoff = now - timedelta(seconds=settings.BYOK_TURN_HARD_LIMIT + 30)
    queued_cutoff = now - timedelta(seconds=settings.BYOK_QUEUED_TURN_TIMEOUT)
    rules = [
        (
            Status.RUNNING,
            {"started_at__lt": running_cutoff},
            "worker_lost",
            "The worker writing this reply stopped before finishing. Retry to try again.",
        ),
        (
            Status.QUEUED,
            {"created_at__lt": queued_cutoff},
            "no_worker",
            "No worker is available right now — try again in a moment.",
        ),
    ]
    for status, cutoff, kind, text in rules:
        stale = Message.objects.select_related("conversation__provider_key", "owner").filter(
            status=status, **cutoff
        )
        for message in stale:
            # A dead worker may have spent tokens it never reported: the reservation is
            # released, not charged; the provider's own dashboard has the exact figure.
            outcome = Outcome(status=Status.ERROR, error_kind=kind, error_message=text)
            try:
                if _close_unrun(message, outcome, open_status=status):
                    reaped += 1
            except Exception:  # one turn that cannot be ended must not stop the others
                logger.exception("the reaper could not end turn %s", message.pk)
    return reaped


def conversations_purge_temporary() -> int:
    """Delete temporary conversations 24 hours after their last message."""
    cutoff = timezone.now() - timedelta(hours=24)
    stale = Conversation.objects.filter(temporary=True, last_message_at__lt=cutoff)
    count = stale.count()
    stale.delete()
    return count
