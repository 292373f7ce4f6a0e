"""Reads that open sealed text for display."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace

from accounts.models import User
from chat.branches import (
    active_branch,
    ends_short,
    is_continuation,
    joined_text,
    reply_parts,
    runs,
)
from chat.models import (
    PURPOSE_ERROR,
    PURPOSE_MESSAGE,
    PURPOSE_SYSTEM,
    PURPOSE_TITLE,
    Conversation,
    Message,
)
from chat.rendering import render_markdown, sent_facts, turn_facts
from usage.selectors import TurnCost, turn_costs
from vault.services import OwnerCipher


@dataclass(frozen=True)
class ConversationItem:
    conversation: Conversation
    title: str


@dataclass(frozen=True)
class MessageView:
    """A message as the page shows it. A reply that was continued is one view of all its
    parts (`parts`, oldest first): `message` is the last part (its status, its stream),
    `text` and `html` the parts joined (`chat.branches.joined_text`)."""

    message: Message
    text: str
    html: str
    error: str = ""  # a failed reply's message, opened
    # Its place among its siblings (the versions of its turn): "< version/versions >".
    version: int = 1
    versions: int = 1
    parts: tuple[Message, ...] = ()
    # The reply's cost by the usage ledger, every part's summed (None: not read).
    cost: TurnCost | None = None
    # The reply ended short (stopped, or at the length limit), has text, and is the end of
    # the branch: the page offers Continue.
    continuable: bool = False

    @property
    def head(self) -> Message:
        """The reply's first part: the message its versions and regeneration are of."""
        return self.parts[0] if self.parts else self.message

    @property
    def facts(self) -> dict[str, str]:
        """What the page shows beside a finished reply (see `turn_facts`): the tokens of
        every part summed, the first part's time to first token, the last part's settings."""
        message = self.message
        if not message.is_final or message.role != Message.Role.ASSISTANT:
            return {"via": "", "usage": ""}
        parts = self.parts or (message,)
        labels = list(
            dict.fromkeys(p.provider_key.label for p in parts if p.provider_key is not None)
        )
        counted = [p for p in parts if p.output_tokens is not None]
        return turn_facts(
            key_label=", ".join(labels),
            input_tokens=sum(p.input_tokens or 0 for p in counted) if counted else None,
            output_tokens=sum(p.output_tokens or 0 for p in counted) if counted else None,
            ttft_ms=parts[0].ttft_ms,
            estimated=any(p.tokens_estimated for p in counted),
            cost=self.cost,
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
    with its version among its siblings, a continued reply as one view of its parts, each
    reply with its cost. The other branches' text is never opened."""
    cipher = cipher or OwnerCipher(conversation.owner)
    tree, path = active_branch(conversation)
    rows = conversation.messages.select_related("provider_key").in_bulk(path)
    grouped = runs([rows[pk] for pk in path if pk in rows])
    replies = [m.pk for m in rows.values() if m.role == Message.Role.ASSISTANT and m.is_final]
    costs = turn_costs(owner=conversation.owner, message_ids=replies) if replies else {}
    views = []
    for index, parts in enumerate(grouped):
        view = _joined_view(parts, cipher, costs, leaf=index == len(grouped) - 1)
        siblings = tree.siblings(parts[0].pk)
        views.append(replace(view, version=siblings.index(parts[0].pk) + 1, versions=len(siblings)))
    return views


def _joined_view(
    parts: list[Message], cipher: OwnerCipher, costs: Mapping[uuid.UUID, TurnCost], *, leaf: bool
) -> MessageView:
    """One view of a message, or of a reply and its continuations."""
    last = parts[-1]
    if len(parts) == 1 and last.role != Message.Role.ASSISTANT:
        return message_view(last, cipher)
    text = joined_text([cipher.open(PURPOSE_MESSAGE, p.pk, p.sealed_content) for p in parts])
    # A reply still being written shows what its stream replays; a continuation being
    # written shows its earlier parts until the stream's first rendering replaces them.
    html = render_markdown(text) if text and (last.is_final or len(parts) > 1) else ""
    cost = None
    if last.is_final and all(p.pk in costs for p in parts):
        cost = TurnCost.total(costs[p.pk] for p in parts)
    return MessageView(
        last,
        text,
        html,
        message_error(last, cipher),
        parts=tuple(parts) if len(parts) > 1 else (),
        cost=cost,
        continuable=leaf and last.is_final and ends_short(last) and bool(text.strip()),
    )


def reply_view(message: Message, cipher: OwnerCipher) -> MessageView:
    """A reply as a reload shows it (load it fresh, with its conversation): continuations
    joined, its cost read, whether it can be continued. Its final event carries the same."""
    if message.role != Message.Role.ASSISTANT:
        return message_view(message, cipher)
    parts = reply_parts(message)
    costs = turn_costs(owner=message.owner, message_ids=[p.pk for p in parts])
    active = message.conversation.active_leaf_id
    return _joined_view(parts, cipher, costs, leaf=active in (None, message.pk))


def continued_prefix(message: Message, cipher: OwnerCipher) -> str:
    """The text a continuation carries on: the reply it continues, its parts joined (its
    trailing whitespace is kept or dropped by the continuation's first character,
    `chat.branches.join_boundary`). "" for any other message."""
    parent = message.parent
    if parent is None or not is_continuation(message.role, parent.role):
        return ""
    parts = reply_parts(parent)
    texts = [cipher.open(PURPOSE_MESSAGE, part.pk, part.sealed_content) for part in parts]
    return joined_text(texts)


def conversation_titles(*, owner: User, ids: list[object]) -> dict[object, str]:
    """Opened titles of the owner's conversations among `ids` (others are left out)."""
    cipher = OwnerCipher(owner)
    return {
        conversation.pk: cipher.open(PURPOSE_TITLE, conversation.pk, conversation.sealed_title)
        or "New chat"
        for conversation in Conversation.objects.for_owner(owner).filter(pk__in=ids)
    }
