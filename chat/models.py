"""Conversations and messages. All text is sealed with the owner's data key.

SECURITY: titles, system prompts and message text are stored only as AES-GCM ciphertext
bound to owner and row (vault); nothing in the database or the admin shows them.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone

if TYPE_CHECKING:
    from accounts.models import User

# What each sealed value is, bound into its ciphertext (vault.services.OwnerCipher).
PURPOSE_TITLE = "conversation_title"
PURPOSE_SYSTEM = "conversation_system_prompt"
PURPOSE_MESSAGE = "message"
PURPOSE_ERROR = "message_error"
# The key of the search index's tokens (chat.search), derived from the owner's data key.
PURPOSE_SEARCH = "chat_search_index"


# The settings a conversation's turns are sent with (chat.services.conversation_settings_update).
TEMPERATURE_MAX = 2.0
# The most output tokens a user may ask for: above every model's output limit today.
MAX_OUTPUT_TOKENS_LIMIT = 128_000


class ReasoningEffort(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"


class TitleSource(models.TextChoices):
    MESSAGE = "message", "The first message"
    USER = "user", "You"
    MODEL = "model", "The model"


class ConversationQuerySet(models.QuerySet["Conversation"]):
    def for_owner(self, user: User) -> ConversationQuerySet:
        return self.filter(owner=user)


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    sealed_title = models.BinaryField(editable=False, default=b"")
    sealed_system_prompt = models.BinaryField(editable=False, default=b"")
    provider_key = models.ForeignKey(
        "keys.ProviderKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    preset = models.CharField(max_length=32)
    # The server the conversation was started against (its key's canonical base URL): its
    # turns go to that server only, whichever of the owner's keys for it answers.
    base_url = models.CharField("base URL", max_length=500, blank=True)
    model = models.CharField(max_length=200)
    temporary = models.BooleanField(
        default=False, help_text="Deleted 24 hours after its last message."
    )
    archived = models.BooleanField(default=False)
    # What each turn is sent; None / blank: the provider's or the model's default (the
    # length: BYOK_MAX_OUTPUT_TOKENS). The caps may send a shorter limit than asked.
    temperature = models.FloatField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField("reply length limit", null=True, blank=True)
    reasoning_effort = models.CharField(max_length=8, choices=ReasoningEffort.choices, blank=True)
    # Shown in the sidebar's "Pinned" group, above the groups by date.
    pinned = models.BooleanField(default=False)
    # Who wrote the title: the first message's text (the default), the user (a rename), or
    # the model (chat.titles, opt-in). A model's title replaces only the first message's.
    title_source = models.CharField(
        max_length=8, choices=TitleSource.choices, default=TitleSource.MESSAGE
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_message_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The leaf of the branch the page shows and the next message is appended to (messages
    # form a tree: edits and regenerations add siblings). Null only before the first message,
    # or if that message is gone: then the newest message is the leaf (chat.branches).
    active_leaf = models.ForeignKey(
        "Message", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    objects: ClassVar[ConversationQuerySet] = ConversationQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        ordering = ["-last_message_at"]
        indexes = [models.Index(fields=["owner", "archived", "-last_message_at"])]

    def __str__(self) -> str:
        return f"conversation {self.pk}"

    @property
    def settings_summary(self) -> str:
        """The settings that differ from the defaults, short: "temp 0.3 · effort high"."""
        parts = []
        if self.temperature is not None:
            parts.append(f"temp {self.temperature:g}")
        if self.reasoning_effort:
            parts.append(f"effort {self.reasoning_effort}")
        if self.max_output_tokens:
            parts.append(f"max {self.max_output_tokens:,} tokens")
        return " · ".join(parts)


class MessageQuerySet(models.QuerySet["Message"]):
    def for_owner(self, user: User) -> MessageQuerySet:
        return self.filter(owner=user)


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "You"
        ASSISTANT = "assistant", "Assistant"

    class Status(models.TextChoices):
        QUEUED = "queued", "Waiting for a worker"
        RUNNING = "running", "Writing"
        DONE = "done", "Done"
        STOPPED = "stopped", "Stopped"
        ERROR = "error", "Failed"

    FINAL = frozenset({Status.DONE, Status.STOPPED, Status.ERROR})

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    # Denormalised so every lookup (the SSE stream included) scopes by owner directly.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # The message this one answers or follows (null for a conversation's first messages).
    # Siblings, messages with the same parent, are the versions of one turn: a user's edits,
    # or an assistant's regenerated replies.
    parent = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="children"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    sealed_content = models.BinaryField(editable=False, default=b"")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DONE)
    error_kind = models.CharField(max_length=32, blank=True)
    # Sealed like the text (PURPOSE_ERROR): a provider's error often quotes the user.
    sealed_error = models.BinaryField(editable=False, default=b"")
    notice = models.CharField(max_length=500, blank=True)
    provider_key = models.ForeignKey(
        "keys.ProviderKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    model = models.CharField(max_length=200, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    cached_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)
    # True when the stream ended before the provider reported usage (stopped, cut off): the
    # counts are this server's estimate, the same that was billed to the usage records.
    tokens_estimated = models.BooleanField(default=False)
    ttft_ms = models.PositiveIntegerField("time to first token (ms)", null=True, blank=True)
    latency_ms = models.PositiveIntegerField("total time (ms)", null=True, blank=True)
    provider_calls = models.PositiveSmallIntegerField(default=0)
    finish_reason = models.CharField(max_length=32, blank=True)
    # What the turn's provider request was sent (after the model's rules and the caps):
    # None / blank when nothing was sent, or the provider's default was left.
    temperature = models.FloatField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_effort = models.CharField(max_length=8, choices=ReasoningEffort.choices, blank=True)
    trimmed_messages = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # When the reaper queued the turn's task again (no worker had claimed it: the broker
    # may have lost it); at most once.
    requeued_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[MessageQuerySet] = MessageQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at"]),
            models.Index(fields=["owner", "status"]),
            # The reaper's sweep (every 10 s) reads only the few replies in flight.
            models.Index(
                fields=["status", "created_at"],
                condition=models.Q(status__in=["queued", "running"]),
                name="chat_message_in_flight",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} message {self.pk}"

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL

    @property
    def is_pending(self) -> bool:
        return self.status in {self.Status.QUEUED, self.Status.RUNNING}


class SearchIndexQuerySet(models.QuerySet["ConversationSearchIndex"]):
    def for_owner(self, user: User) -> SearchIndexQuerySet:
        return self.filter(owner=user)


class ConversationSearchIndex(models.Model):
    """A keyed Bloom filter of the words of one conversation (title and every message), so
    a search opens only the conversations that may match (chat.search).

    SECURITY: the filter holds bits set by HMAC tokens under a key derived from the owner's
    data key (PURPOSE_SEARCH), never a word; `signature` is made of counts, sizes, times and
    the title's nonce, never of text. Rebuilt by a search whenever the signature differs.
    """

    conversation = models.OneToOneField(
        Conversation, on_delete=models.CASCADE, primary_key=True, related_name="search_index"
    )
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    bloom = models.BinaryField(editable=False, default=b"")
    signature = models.CharField(max_length=200, editable=False)
    built_at = models.DateTimeField(default=timezone.now)

    objects: ClassVar[SearchIndexQuerySet] = SearchIndexQuerySet.as_manager()  # type: ignore[assignment]

    def __str__(self) -> str:
        return f"search index of conversation {self.pk}"


class TitleCallQuerySet(models.QuerySet["TitleCall"]):
    def for_owner(self, user: User) -> TitleCallQuerySet:
        return self.filter(owner=user)


class TitleCall(models.Model):
    """The model's call for a conversation's title (chat.titles): at most one per
    conversation, after its first reply. Its id is the call's id: its usage event (purpose
    "title"), reservation and rate-limit slot. SECURITY: no text here; the title it writes is
    sealed on the conversation, and nothing else of the call's text is stored."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Waiting for a worker"
        RUNNING = "running", "Writing"
        DONE = "done", "Done"
        SKIPPED = "skipped", "Skipped"  # refused at admission (a cap, a rate limit), or moot
        FAILED = "failed", "Failed"  # the provider's error: the first message's title stays

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.OneToOneField(
        Conversation, on_delete=models.CASCADE, related_name="title_call"
    )
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # The first reply, whose start (and the message it answers) the title is written from.
    reply = models.ForeignKey(Message, on_delete=models.SET_NULL, null=True, related_name="+")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[TitleCallQuerySet] = TitleCallQuerySet.as_manager()  # type: ignore[assignment]

    def __str__(self) -> str:
        return f"title call {self.pk}"
