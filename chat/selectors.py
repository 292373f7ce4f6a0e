"""Reads that open sealed text for display."""

from __future__ import annotations

from dataclasses import dataclass, replace

from accounts.models import User
from chat.branches import active_branch
from chat.models import (
    PURPOSE_ERROR,
    PURPOSE_MESSAGE,
    PURPOSE_SYSTEM,
    PURPOSE_TITLE,
    Conversation,
    Message,
)
from chat.rendering import render_markdown, sent_facts, turn_facts
from keys.models import ProviderKey
from providers.catalog import PRESETS
from vault.services import OwnerCipher


@dataclass(frozen=True)
class ConversationItem:
    conversation: Conversation
    title: str


@dataclass(frozen=True)
class MessageView:
    message: Message
    text: str
    html: str
    error: str = ""  # a failed reply's message, opened
    # Its place among its siblings (the versions of its turn): "< version/versions >".
    version: int = 1
    versions: int = 1

    @property
    def facts(self) -> dict[str, str]:
        """What the page shows beside a finished reply (see `turn_facts`)."""
        message = self.message
        if not message.is_final or message.role != Message.Role.ASSISTANT:
            return {"via": "", "usage": ""}
        key = message.provider_key
        return turn_facts(
            key_label=key.label if key is not None else "",
            input_tokens=message.input_tokens,
            output_tokens=message.output_tokens,
            ttft_ms=message.ttft_ms,
            estimated=message.tokens_estimated,
            **sent_facts(
                {
                    "temperature": message.temperature,
                    "max_output_tokens": message.max_output_tokens,
                    "reasoning_effort": message.reasoning_effort,
                }
            ),
        )


def conversation_list(
    *, owner: User, query: str = "", archived: bool = False
) -> list[ConversationItem]:
    """The owner's conversations, newest first, titles opened; `query` filters by title.

    Titles are sealed, so the search runs here rather than in SQL.
    """
    cipher = OwnerCipher(owner)
    items = []
    needle = query.strip().lower()
    for conversation in Conversation.objects.for_owner(owner).filter(archived=archived):
        title = cipher.open(PURPOSE_TITLE, conversation.pk, conversation.sealed_title) or "New chat"
        if needle and needle not in title.lower():
            continue
        items.append(ConversationItem(conversation, title))
    return items


def conversation_title(conversation: Conversation, cipher: OwnerCipher | None = None) -> str:
    cipher = cipher or OwnerCipher(conversation.owner)
    return cipher.open(PURPOSE_TITLE, conversation.pk, conversation.sealed_title) or "New chat"


def conversation_system_prompt(
    conversation: Conversation, cipher: OwnerCipher | None = None
) -> str:
    cipher = cipher or OwnerCipher(conversation.owner)
    return cipher.open(PURPOSE_SYSTEM, conversation.pk, conversation.sealed_system_prompt)


def message_view(message: Message, cipher: OwnerCipher) -> MessageView:
    text = cipher.open(PURPOSE_MESSAGE, message.pk, message.sealed_content)
    # A reply still being written shows what its stream replays, not its last checkpoint.
    html = (
        render_markdown(text) if message.role == Message.Role.ASSISTANT and message.is_final else ""
    )
    return MessageView(message, text, html, message_error(message, cipher))


# A failed reply whose message could not be sealed (its owner's data key did not open).
UNSEALED_ERROR = "This reply failed. Retry to try again."


def message_error(message: Message, cipher: OwnerCipher) -> str:
    """A failed reply's message (sealed: a provider's error may quote the user)."""
    if message.status != Message.Status.ERROR:
        return ""
    return cipher.open(PURPOSE_ERROR, message.pk, message.sealed_error) or UNSEALED_ERROR


def conversation_messages(
    conversation: Conversation, cipher: OwnerCipher | None = None
) -> list[MessageView]:
    """Every message of every branch, oldest first (the export: `parent_id` rebuilds the
    tree). The page shows one branch: `conversation_branch`."""
    cipher = cipher or OwnerCipher(conversation.owner)
    return [message_view(m, cipher) for m in conversation.messages.select_related("provider_key")]


def conversation_branch(
    conversation: Conversation, cipher: OwnerCipher | None = None
) -> list[MessageView]:
    """The branch the conversation shows (first message to its active leaf), each message
    with its version among its siblings. The other branches' text is never opened."""
    cipher = cipher or OwnerCipher(conversation.owner)
    tree, path = active_branch(conversation)
    rows = conversation.messages.select_related("provider_key").in_bulk(path)
    views = []
    for message_id in path:
        siblings = tree.siblings(message_id)
        view = message_view(rows[message_id], cipher)
        views.append(replace(view, version=siblings.index(message_id) + 1, versions=len(siblings)))
    return views


def conversation_titles(*, owner: User, ids: list[object]) -> dict[object, str]:
    """Opened titles of the owner's conversations among `ids` (others are left out)."""
    cipher = OwnerCipher(owner)
    return {
        conversation.pk: cipher.open(PURPOSE_TITLE, conversation.pk, conversation.sealed_title)
        or "New chat"
        for conversation in Conversation.objects.for_owner(owner).filter(pk__in=ids)
    }


# Keys in the picker: those that work first; within a status, as the Keys page orders them.
_KEY_ORDER = {
    ProviderKey.Status.VALID: 0,
    ProviderKey.Status.CHECKING: 1,
    ProviderKey.Status.UNVERIFIED: 2,
    ProviderKey.Status.NO_CREDIT: 3,
    ProviderKey.Status.INVALID: 4,
}


@dataclass(frozen=True)
class KeyOption:
    key: ProviderKey
    label: str


@dataclass(frozen=True)
class ModelPicker:
    """The composer's key and model: the keys to choose from and what is chosen."""

    options: list[KeyOption]
    key: ProviderKey | None
    model: str

    @property
    def key_id(self) -> str:
        return str(self.key.pk) if self.key is not None else ""

    @property
    def warning(self) -> str:
        """Why the chosen key may not answer (its status), for the composer."""
        key = self.key
        if key is None or key.status == ProviderKey.Status.VALID:
            return ""
        if key.status == ProviderKey.Status.CHECKING:
            return f"“{key.label}” is still being checked."
        return f"“{key.label}” is {key.get_status_display().lower()}: its replies may fail. Pick another key, or fix it on the Keys page."


def _key_label(key: ProviderKey) -> str:
    name = key.label if key.label == key.preset_name else f"{key.label} · {key.preset_name}"
    return f"{name} — {key.get_status_display().rstrip('…')}"


def model_picker(*, owner: User, conversation: Conversation | None = None) -> ModelPicker:
    """The composer's choices. In a conversation: its key and model. For a new chat: the
    key and model of the owner's most recent chat whose key is valid, else their first
    valid key with its provider's first model; a key that is not valid is never chosen
    for them."""
    keys = sorted(
        ProviderKey.objects.for_owner(owner).usable(),
        key=lambda k: (_KEY_ORDER.get(k.status, 9), k.preset, k.priority, k.label),
    )
    options = [KeyOption(key, _key_label(key)) for key in keys]
    by_id = {key.pk: key for key in keys}
    if conversation is not None:
        return ModelPicker(options, by_id.get(conversation.provider_key_id), conversation.model)
    valid = [key for key in keys if key.status == ProviderKey.Status.VALID]
    last = (
        Conversation.objects.for_owner(owner)
        .filter(provider_key__in=valid)
        .order_by("-last_message_at")
        .values_list("provider_key_id", "model")
        .first()
    )
    if last is not None:
        return ModelPicker(options, by_id[last[0]], last[1])
    if valid:
        preset = PRESETS.get(valid[0].preset)
        models = preset.popular_models if preset is not None else ()
        return ModelPicker(options, valid[0], models[0] if models else "")
    return ModelPicker(options, None, "")
