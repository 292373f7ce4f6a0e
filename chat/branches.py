"""A conversation's messages as a tree: edits and regenerations are siblings (same parent),
and the conversation shows one branch, the path from the first message to its active leaf.

`Tree` reads only ids, parents and creation times (one query), so walking it never opens
sealed text; callers load the rows of the branch they need.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from chat.models import Conversation, Message


@dataclass
class Tree:
    """The shape of one conversation: every message's parent and children, oldest first."""

    parent: dict[uuid.UUID, uuid.UUID | None] = field(default_factory=dict)
    children: dict[uuid.UUID | None, list[uuid.UUID]] = field(
        default_factory=lambda: defaultdict(list)
    )
    newest: uuid.UUID | None = None

    @classmethod
    def of(cls, conversation_id: uuid.UUID | str) -> Tree:
        tree = cls()
        rows = (
            Message.objects.filter(conversation_id=conversation_id)
            .order_by("created_at", "id")
            .values_list("id", "parent_id")
        )
        for message_id, parent_id in rows:
            tree.parent[message_id] = parent_id
            tree.children[parent_id].append(message_id)
            tree.newest = message_id
        return tree

    def __contains__(self, message_id: object) -> bool:
        return message_id in self.parent

    def path_to(self, message_id: uuid.UUID) -> list[uuid.UUID]:
        """The branch from the first message down to `message_id` (included)."""
        path: list[uuid.UUID] = []
        current: uuid.UUID | None = message_id
        while current is not None and current in self.parent and current not in path:
            path.append(current)
            current = self.parent[current]
        path.reverse()
        return path

    def siblings(self, message_id: uuid.UUID) -> list[uuid.UUID]:
        """The versions of `message_id`'s turn, itself included, oldest first."""
        return self.children[self.parent[message_id]]

    def newest_leaf(self, message_id: uuid.UUID) -> uuid.UUID:
        """The leaf reached from `message_id` by following the most recent child down."""
        current = message_id
        seen = {current}
        while self.children.get(current):
            current = self.children[current][-1]
            if current in seen:  # a cycle cannot be written by the services; stop anyway
                break
            seen.add(current)
        return current

    def leaf(self, conversation: Conversation) -> uuid.UUID | None:
        """The conversation's active leaf; the newest message if it has none."""
        active = conversation.active_leaf_id
        if active is not None and active in self.parent:
            return active
        return self.newest


def active_branch(conversation: Conversation) -> tuple[Tree, list[uuid.UUID]]:
    """The tree and the ids of the branch the conversation shows, oldest first."""
    tree = Tree.of(conversation.pk)
    leaf = tree.leaf(conversation)
    return tree, tree.path_to(leaf) if leaf is not None else []


# --- continued replies ----------------------------------------------------------------------
#
# "Continue" on a reply that was stopped or cut off at the length limit adds a new assistant
# message whose parent is that reply: each provider call keeps its own row (its own usage
# event, reservation, stream and stop flag, all keyed by the row's id). An assistant message
# under an assistant message is a continuation of it, and nothing else makes one; the page
# shows such a run of parts as one reply, and the provider is sent it as one message.


def is_continuation(role: str, parent_role: str | None) -> bool:
    """Whether a message of `role` under a parent of `parent_role` continues that parent."""
    return role == Message.Role.ASSISTANT and parent_role == Message.Role.ASSISTANT


def joined_text(parts: list[str]) -> str:
    """The text of a reply written in parts. The model is shown each part without its
    trailing whitespace (Anthropic refuses a prefill that ends in it), so where the next part
    starts with whitespace of its own that part's is dropped; otherwise it is kept (a reply
    stopped after a paragraph break keeps the break). `join_boundary` is the rule."""
    text = ""
    for part in parts:
        text = join_boundary(text, part)
    return text


def join_boundary(before: str, after: str) -> str:
    """`before` followed by the part that continues it (see `joined_text`)."""
    if after[:1].isspace():
        return before.rstrip() + after
    return before + after


def runs(messages: list[Message]) -> list[list[Message]]:
    """A branch's messages (oldest first) grouped as the page shows them: each
    continuation joins the reply it continues."""
    grouped: list[list[Message]] = []
    for message in messages:
        previous = grouped[-1][-1] if grouped else None
        if (
            previous is not None
            and message.parent_id == previous.pk
            and is_continuation(message.role, previous.role)
        ):
            grouped[-1].append(message)
        else:
            grouped.append([message])
    return grouped


def ends_short(message: Message) -> bool:
    """Whether a reply ended before it was complete, so it can be continued: stopped, or
    done at the length limit (the provider's finish reason `length`)."""
    return message.role == Message.Role.ASSISTANT and (
        message.status == Message.Status.STOPPED
        or (message.status == Message.Status.DONE and message.finish_reason == "length")
    )


def reply_parts(message: Message, tree: Tree | None = None) -> list[Message]:
    """The parts of the reply `message` ends (itself and the replies it continues, oldest
    first): the run of assistant messages up the tree from it."""
    if message.role != Message.Role.ASSISTANT or message.parent_id is None:
        return [message]
    if tree is None:
        continues = Message.objects.filter(pk=message.parent_id, role=Message.Role.ASSISTANT)
        if not continues.exists():  # most replies: one part, no tree to read
            return [message]
        tree = Tree.of(message.conversation_id)
    path = tree.path_to(message.pk)
    replies = set(
        Message.objects.filter(pk__in=path, role=Message.Role.ASSISTANT).values_list(
            "pk", flat=True
        )
    )
    run: list[uuid.UUID] = []
    for pk in reversed(path):
        if pk not in replies:
            break
        run.append(pk)
    run.reverse()
    rows = Message.objects.filter(pk__in=run).select_related("provider_key").in_bulk()
    found = [rows[pk] for pk in run if pk in rows] or [message]
    found[-1] = message  # the caller's row, as loaded
    return found
