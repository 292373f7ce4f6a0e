"""Reads that open sealed text for display."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from django.utils import timezone

from accounts.models import User
from chat import search
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
from chat.rendering import error_link, render_markdown, sent_facts, turn_facts
from keys.models import ProviderKey
from providers.catalog import PRESETS
from usage.selectors import TurnCost, turn_costs
from vault.services import OwnerCipher


@dataclass(frozen=True)
class ConversationItem:
    conversation: Conversation
    title: str


@dataclass(frozen=True)
class ConversationGroup:
    label: str
    items: list[ConversationItem]


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
    def error_link(self) -> str:
        """The page a failed reply links to ("keys", "usage" or ""), as the live event did."""
        if self.message.status != Message.Status.ERROR:
            return ""
        return error_link(self.message.error_kind)

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
    *, owner: User, archived: bool = False, limit: int | None = None
) -> list[ConversationItem]:
    """The owner's newest conversations (all, or the first `limit`), titles opened. Search
    is `conversation_search`; the sidebar's groups are `conversation_groups`."""
    cipher = OwnerCipher(owner)
    conversations = Conversation.objects.for_owner(owner).filter(archived=archived)
    return [
        ConversationItem(
            conversation,
            cipher.open(PURPOSE_TITLE, conversation.pk, conversation.sealed_title) or "New chat",
        )
        for conversation in conversations[:limit]
    ]


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


# Keys in the picker: those that work first; within a status, as the Keys page orders them.
_KEY_ORDER: dict[str, int] = {
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
        status = key.get_status_display().lower()
        return f"“{key.label}” is {status}: its replies may fail. Pick another key, or fix it."


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
        current = by_id.get(conversation.provider_key_id) if conversation.provider_key_id else None
        return ModelPicker(options, current, conversation.model)
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


# --- the sidebar: groups by date, pins --------------------------------------------------------

PINNED = "Pinned"
TODAY = "Today"
YESTERDAY = "Yesterday"
PREVIOUS_7_DAYS = "Previous 7 days"
PREVIOUS_30_DAYS = "Previous 30 days"
OLDER = "Older"
GROUP_ORDER = [PINNED, TODAY, YESTERDAY, PREVIOUS_7_DAYS, PREVIOUS_30_DAYS, OLDER]


def date_group(day: date, today: date) -> str:
    """The sidebar group of a conversation last written to on `day` (local dates)."""
    age = (today - day).days
    if age <= 0:
        return TODAY  # today, or a clock a little ahead
    if age == 1:
        return YESTERDAY
    if age <= 7:
        return PREVIOUS_7_DAYS
    if age <= 30:
        return PREVIOUS_30_DAYS
    return OLDER


SIDEBAR_LIMIT = 200  # conversations listed before "Show all"


@dataclass(frozen=True)
class Sidebar:
    groups: list[ConversationGroup]
    hidden: int  # conversations left out (past `limit`); search finds them


def conversation_groups(
    *, owner: User, archived: bool = False, limit: int | None = SIDEBAR_LIMIT
) -> Sidebar:
    """The owner's conversations for the sidebar, titles opened: the pinned ones first, then
    the others by their last message's date in the current time zone (Today, Yesterday,
    Previous 7 days, Previous 30 days, Older), newest first within each; empty groups left
    out. Past `limit` conversations (pinned ones aside) the rest are counted, not listed."""
    today = timezone.localdate()
    cipher = OwnerCipher(owner)
    groups: dict[str, list[ConversationItem]] = {label: [] for label in GROUP_ORDER}
    listed = hidden = 0
    for conversation in Conversation.objects.for_owner(owner).filter(archived=archived):
        if conversation.pinned:
            label = PINNED
        elif limit is not None and listed >= limit:
            hidden += 1
            continue
        else:
            listed += 1
            label = date_group(timezone.localdate(conversation.last_message_at), today)
        title = conversation_title(conversation, cipher)
        groups[label].append(ConversationItem(conversation, title))
    return Sidebar(
        [ConversationGroup(label, items) for label, items in groups.items() if items], hidden
    )


# --- search -----------------------------------------------------------------------------------

SEARCH_MAX_CHARS = 200  # a longer query is clipped to this many characters
SEARCH_MAX_HITS = 30
SEARCH_HITS_PER_CONVERSATION = 3
SNIPPET_BEFORE = 40
SNIPPET_AFTER = 90
SEARCH_OPEN_BATCH = 25  # candidate conversations whose messages are read in one query


@dataclass(frozen=True)
class SnippetPart:
    text: str
    mark: bool = False


@dataclass(frozen=True, slots=True)
class FoundConversation:
    """What a search result shows of its conversation."""

    pk: uuid.UUID
    archived: bool
    last_message_at: datetime


@dataclass(frozen=True)
class SearchHit:
    conversation: FoundConversation
    title: list[SnippetPart]  # the title, its matches marked
    message_id: uuid.UUID | None = None  # None: the title matched
    role: str = ""
    snippet: list[SnippetPart] = field(default_factory=list)


@dataclass(frozen=True)
class SearchResults:
    query: str  # what was searched for (clipped to SEARCH_MAX_CHARS)
    clipped: bool
    hits: list[SearchHit]
    more: bool  # SEARCH_MAX_HITS were found; there may be others
    titles_only: bool = False  # no word long enough to look up in messages


def search_terms(query: str) -> tuple[str, list[str], bool]:
    """The query as searched (whitespace collapsed, clipped to SEARCH_MAX_CHARS), its terms
    (normalised and case-folded like the index, each once) and whether it was clipped."""
    collapsed = " ".join(query.split())
    searched = collapsed[:SEARCH_MAX_CHARS].strip()
    terms = list(dict.fromkeys(search.normalised(searched).split()))
    return searched, terms, len(collapsed) > SEARCH_MAX_CHARS


def _matcher(terms: list[str]) -> Callable[[str], bool]:
    """Whether a text holds every term, literally (no pattern syntax), each term that
    begins with a letter or digit at the start of a word (as the index finds them)."""
    patterns = [
        re.compile(("(?<![^\\W_])" if term[0].isalnum() else "") + re.escape(term))
        for term in terms
    ]

    def matches(text: str) -> bool:
        folded = search.normalised(text)
        return all(pattern.search(folded) for pattern in patterns)

    return matches


def _marked(text: str, terms: list[str]) -> list[SnippetPart]:
    """`text` in parts, every occurrence of a term marked. Plain strings only: the template
    escapes each part and wraps the marked ones in <mark>."""
    pattern = re.compile(
        "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)), re.IGNORECASE
    )
    parts: list[SnippetPart] = []
    position = 0
    for match in pattern.finditer(text):
        if match.start() > position:
            parts.append(SnippetPart(text[position : match.start()]))
        parts.append(SnippetPart(match.group(), mark=True))
        position = match.end()
    if position < len(text):
        parts.append(SnippetPart(text[position:]))
    return parts or [SnippetPart(text)]


def _snippet(text: str, terms: list[str]) -> list[SnippetPart]:
    """A short plain-text window of `text` around its first match, whitespace collapsed,
    cut at spaces with an ellipsis where it was cut, matches marked."""
    first = min(
        (m.start() for t in terms if (m := re.search(re.escape(t), text, re.IGNORECASE))),
        default=0,
    )
    start = max(0, first - SNIPPET_BEFORE)
    end = min(len(text), first + SNIPPET_AFTER)
    if start > 0:
        space = text.find(" ", start, first)
        start = space + 1 if space != -1 else start
    if end < len(text):
        space = text.rfind(" ", first, end)
        end = space if space > first else end
    window = re.sub(r"\s+", " ", text[start:end]).strip()
    window = ("…" if start > 0 else "") + window + ("…" if end < len(text) else "")
    return _marked(window, terms)


def conversation_search(*, owner: User, query: str) -> SearchResults | None:
    """The owner's conversations whose title, or one of whose messages (the user's and the
    replies, every branch), holds every word of `query`: literally (no pattern syntax),
    case-insensitively, each word that begins with a letter or digit at the start of a
    word, so what is typed so far finds the words it begins. None for an empty query.

    SECURITY: titles and messages are sealed. Titles are opened here (the owner's cipher,
    this request); messages only for the conversations the keyed search index says may
    match (chat.search), which holds no readable word. Only the owner's rows are read.

    Title hits first, then message hits, conversations newest first and their messages
    newest first, at most SEARCH_HITS_PER_CONVERSATION per conversation and
    SEARCH_MAX_HITS in all. A query with no word of two letters or more searches titles
    only (`titles_only`).
    """
    searched, terms, clipped = search_terms(query)
    if not terms:
        return None
    matches = _matcher(terms)
    cipher = OwnerCipher(owner)
    conversations: list[FoundConversation] = []
    titles: dict[uuid.UUID, str] = {}
    rows = Conversation.objects.for_owner(owner).values_list(  # newest first
        "id", "sealed_title", "archived", "last_message_at"
    )
    for pk, sealed_title, archived, last_message_at in rows:
        conversations.append(FoundConversation(pk, archived, last_message_at))
        titles[pk] = cipher.open(PURPOSE_TITLE, pk, sealed_title) or "New chat"
    by_id = {c.pk: c for c in conversations}
    hits: list[SearchHit] = []

    def results(*, more: bool, titles_only: bool = False) -> SearchResults:
        return SearchResults(searched, clipped, hits, more=more, titles_only=titles_only)

    for conversation in conversations:
        if matches(titles[conversation.pk]):
            hits.append(SearchHit(conversation, _marked(titles[conversation.pk], terms)))
            if len(hits) >= SEARCH_MAX_HITS:
                return results(more=True)
    maybe = search.candidates(owner=owner, cipher=cipher, conversations=conversations, terms=terms)
    if maybe is None:
        return results(more=False, titles_only=True)
    for start in range(0, len(maybe), SEARCH_OPEN_BATCH):
        batch = maybe[start : start + SEARCH_OPEN_BATCH]
        for conversation_id, messages in search.opened_messages(owner, cipher, batch).items():
            found = 0
            for message_id, role, text in messages:
                if not matches(text):
                    continue
                hits.append(
                    SearchHit(
                        by_id[conversation_id],
                        _marked(titles[conversation_id], terms),
                        message_id=message_id,
                        role=role,
                        snippet=_snippet(text, terms),
                    )
                )
                if len(hits) >= SEARCH_MAX_HITS:
                    return results(more=True)
                found += 1
                if found >= SEARCH_HITS_PER_CONVERSATION:
                    break
    return results(more=False)
