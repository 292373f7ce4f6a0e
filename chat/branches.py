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
