"""The search index: which of an owner's conversations may hold a query's words, without a
readable word at rest (docs/architecture.md, "Search").

Each conversation has one keyed Bloom filter (`ConversationSearchIndex`) of its messages'
word prefixes (2 to 8 letters of every word, Unicode-normalised, case-folded), set by
HMAC-SHA256 tokens under a key derived from the owner's data key (`OwnerCipher.
blind_tokens`). A search asks the filters which conversations may contain a prefix of each
query word, then opens only those conversations' messages to check the words really are
there (a filter answers "maybe" for about 2 % of the others) and to cut the snippets.

The filters are kept by the searches themselves, so no write path has to know of them: a
conversation's `signature` (how many messages, their sealed sizes, the newest message's
creation and finish times, the conversation's last message time) is read in one aggregate
query; a filter whose signature differs is rebuilt, within a time budget per request, and
a conversation whose filter is missing or out of date is searched by opening it. A text
rewritten in place at exactly the same length, with no new message and no time moved, is
the one change a signature would not see; every write in chat today changes one of them.
"""

from __future__ import annotations

import contextlib
import re
import struct
import threading
import time
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol

import redis
from django.db import transaction
from django.db.models import Count, Max, Sum, TextField
from django.db.models.functions import Cast, Length

from accounts.models import User
from chat.models import (
    PURPOSE_MESSAGE,
    PURPOSE_SEARCH,
    Conversation,
    ConversationSearchIndex,
    Message,
)
from core.redis import get_redis
from vault.services import OwnerCipher

INDEX_VERSION = "1"
WORD = re.compile(r"[^\W_]+")  # letters and digits; everything else separates words
MIN_PREFIX = 2
MAX_PREFIX = 8
BITS_PER_TOKEN = 8
HASHES = 5  # with 8 bits per token: about 2 % false "maybe"s per query word
MIN_BITS = 256
REFRESH_BUDGET_SECONDS = 0.15  # per request; what is left is searched by opening it
REFRESH_BATCH = 20  # conversations whose messages are read in one query
BACKFILL_TTL_SECONDS = 600  # a queued backfill blocks another for at most this long


def normalised(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def words(text: str) -> set[str]:
    return set(WORD.findall(normalised(text)))


def prefixes(found: Iterable[str]) -> set[str]:
    """Every prefix of MIN_PREFIX to MAX_PREFIX characters of each word."""
    out: set[str] = set()
    for word in found:
        for length in range(MIN_PREFIX, min(len(word), MAX_PREFIX) + 1):
            out.add(word[:length])
    return out


def query_prefixes(terms: Iterable[str]) -> set[str]:
    """The prefix each word of the query must begin a word with (its first MAX_PREFIX
    characters); words shorter than MIN_PREFIX constrain nothing."""
    return {word[:MAX_PREFIX] for term in terms for word in words(term) if len(word) >= MIN_PREFIX}


_HASH_WORDS = struct.Struct(f">{HASHES}I")


def _positions(token: bytes, bits: int) -> tuple[int, ...]:
    """The filter's bits for a token: HASHES 32-bit words of its HMAC, modulo the size (a
    power of two, so each is uniform)."""
    mask = bits - 1
    return tuple(word & mask for word in _HASH_WORDS.unpack_from(token))


def bloom_build(tokens: list[bytes]) -> bytes:
    """A Bloom filter of `tokens`: BITS_PER_TOKEN bits each, rounded up to a power of two
    (so its size says only roughly how many distinct prefixes there are)."""
    bits = MIN_BITS
    while bits < BITS_PER_TOKEN * len(tokens):
        bits *= 2
    array = bytearray(bits // 8)
    for token in tokens:
        for position in _positions(token, bits):
            array[position >> 3] |= 1 << (position & 7)
    return bytes(array)


def bloom_may_hold(bloom: bytes, tokens: list[bytes]) -> bool:
    bits = len(bloom) * 8
    if not bits:
        return False
    return all(
        bloom[position >> 3] & (1 << (position & 7))
        for token in tokens
        for position in _positions(token, bits)
    )


def _signature(conversation: ConversationRef, aggregate: tuple[object, ...]) -> str:
    """What the conversation's messages look like now, in counts, sizes and times."""
    count, size, created, finished = aggregate
    last = conversation.last_message_at
    return (
        f"{INDEX_VERSION}:{count}:{size or 0}:{created or ''}:{finished or ''}:"
        f"{last.isoformat() if isinstance(last, datetime) else ''}"
    )


def opened_messages(
    owner: User, cipher: OwnerCipher, conversation_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[uuid.UUID, str, str]]]:
    """The owner's messages (id, role, text) of the given conversations, newest first, in
    one query; empty ones left out."""
    rows = (
        Message.objects.for_owner(owner)
        .filter(conversation_id__in=conversation_ids)
        .exclude(sealed_content=b"")
        .order_by("-created_at", "-id")
        .values_list("id", "conversation_id", "role", "sealed_content")
    )
    out: dict[uuid.UUID, list[tuple[uuid.UUID, str, str]]] = {pk: [] for pk in conversation_ids}
    for message_id, conversation_id, role, sealed in rows:
        out[conversation_id].append(
            (message_id, role, cipher.open(PURPOSE_MESSAGE, message_id, sealed))
        )
    return out


def _refresh(
    owner: User,
    cipher: OwnerCipher,
    stale: list[tuple[uuid.UUID, str]],
    *,
    budget: float | None,
) -> dict[uuid.UUID, bytes]:
    """Rebuild the filters of `stale` (conversation id, signature), newest first, until
    `budget` seconds are spent (None: all of them). Returns the filters built."""
    started = time.monotonic()
    built: dict[uuid.UUID, bytes] = {}
    for start in range(0, len(stale), REFRESH_BATCH):
        if budget is not None and time.monotonic() - started > budget:
            break
        batch = stale[start : start + REFRESH_BATCH]
        texts = opened_messages(owner, cipher, [pk for pk, _ in batch])
        rows = []
        for pk, signature in batch:
            found: set[str] = set()
            for _, _, text in texts[pk]:
                found |= words(text)
            bloom = bloom_build(cipher.blind_tokens(PURPOSE_SEARCH, sorted(prefixes(found))))
            built[pk] = bloom
            _filter_cache.get(owner.pk)[pk] = (signature, bloom)
            rows.append(
                ConversationSearchIndex(
                    conversation_id=pk, owner=owner, bloom=bloom, signature=signature
                )
            )
        # Two searches at once may both rebuild one filter: the last one wins, both right.
        ConversationSearchIndex.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["conversation"],
            update_fields=["bloom", "signature", "built_at"],
        )
    return built


def candidates(
    *,
    owner: User,
    cipher: OwnerCipher,
    conversations: Sequence[ConversationRef],
    terms: list[str],
) -> list[uuid.UUID] | None:
    """The ids of `conversations` (the owner's, in their order) whose messages may contain
    every word of `terms`: their filters say so, or they have none up to date yet. None when
    no word of the query is long enough (MIN_PREFIX) to look up."""
    wanted = query_prefixes(terms)
    if not wanted:
        return None
    query_tokens = cipher.blind_tokens(PURPOSE_SEARCH, sorted(wanted))
    searchable, current, stale = _filters(owner, conversations)
    built = _refresh(owner, cipher, stale, budget=REFRESH_BUDGET_SECONDS)
    current.update(built)
    if len(built) < len(stale):
        _queue_backfill(owner)
    return [
        pk for pk in searchable if pk not in current or bloom_may_hold(current[pk], query_tokens)
    ]


def _filters(
    owner: User, conversations: Sequence[ConversationRef]
) -> tuple[list[uuid.UUID], dict[uuid.UUID, bytes], list[tuple[uuid.UUID, str]]]:
    """The conversations with messages (in order), the filters up to date, and the
    conversations whose filter is missing or out of date with their current signature."""
    aggregates = {
        row[0]: row[1:]
        for row in Message.objects.for_owner(owner)
        .values("conversation_id")
        .annotate(
            n=Count("id"),
            size=Sum(Length("sealed_content")),
            # As the database writes them: no datetime to build per conversation.
            created=Cast(Max("created_at"), TextField()),
            finished=Cast(Max("finished_at"), TextField()),
        )
        .order_by()
        .values_list("conversation_id", "n", "size", "created", "finished")
    }
    signatures = {
        c.pk: _signature(c, aggregates[c.pk]) for c in conversations if c.pk in aggregates
    }
    filters = _cached_filters(owner, signatures)
    current: dict[uuid.UUID, bytes] = {}
    stale: list[tuple[uuid.UUID, str]] = []
    for pk, signature in signatures.items():
        known = filters.get(pk)
        if known is not None and known[0] == signature:
            current[pk] = known[1]
        else:
            stale.append((pk, signature))
    return list(signatures), current, stale


class ConversationRef(Protocol):
    """What the index reads of a conversation (a model instance, or fewer columns)."""

    @property
    def pk(self) -> uuid.UUID: ...

    @property
    def last_message_at(self) -> datetime: ...


class _FilterCache:
    """The filters this process read last, per owner (least recently searched owner dropped
    first, FILTER_CACHE_BYTES in all): typing a query asks again every few hundred
    milliseconds, and only the filters whose signature moved are read again. Holds Bloom
    bits and signatures only, never text; the signature check keeps it right."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.owners: OrderedDict[object, dict[uuid.UUID, tuple[str, bytes]]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, owner_id: object) -> dict[uuid.UUID, tuple[str, bytes]]:
        with self.lock:
            filters = self.owners.pop(owner_id, {})
            self.owners[owner_id] = filters
            return filters

    def trim(self) -> None:
        with self.lock:
            size = sum(len(b) for f in self.owners.values() for _, b in f.values())
            while size > self.limit and len(self.owners) > 1:
                _, dropped = self.owners.popitem(last=False)
                size -= sum(len(b) for _, b in dropped.values())


FILTER_CACHE_BYTES = 64 * 1024 * 1024
_filter_cache = _FilterCache(FILTER_CACHE_BYTES)


def _cached_filters(
    owner: User, signatures: dict[uuid.UUID, str]
) -> dict[uuid.UUID, tuple[str, bytes]]:
    """The stored filters (signature, bits) of the owner's conversations: from this
    process's cache where its signature is current, else read (and cached)."""
    cached = _filter_cache.get(owner.pk)
    unknown = [pk for pk, signature in signatures.items() if cached.get(pk, ("",))[0] != signature]
    if unknown:
        rows = ConversationSearchIndex.objects.for_owner(owner)
        if len(unknown) < len(signatures) // 2:
            rows = rows.filter(conversation_id__in=unknown)
        for pk, signature, bloom in rows.values_list("conversation_id", "signature", "bloom"):
            cached[pk] = (signature, bytes(bloom))
        for pk in set(cached) - set(signatures):
            del cached[pk]  # deleted conversations
        _filter_cache.trim()
    return cached


def _backfill_key(owner_id: object) -> str:
    return f"byok:search-index:{owner_id}:queued"


def _queue_backfill(owner: User) -> None:
    """Have a worker bring the owner's filters up to date (at most one task queued per
    owner at a time), so the searches that follow open nothing they need not."""
    from chat.tasks import search_index_refresh

    owner_id = owner.pk
    try:
        if not get_redis().set(_backfill_key(owner_id), "1", nx=True, ex=BACKFILL_TTL_SECONDS):
            return
    except redis.RedisError:
        return  # the next search asks again
    transaction.on_commit(
        lambda: search_index_refresh.apply_async(args=(owner_id,), queue="default"), robust=True
    )


def search_index_build(*, owner: User) -> int:
    """Bring every filter of the owner's conversations up to date now, however long it
    takes (a backfill: searches do it bit by bit). Returns how many were rebuilt."""
    try:
        _, _, stale = _filters(owner, list(Conversation.objects.for_owner(owner)))
        return len(_refresh(owner, OwnerCipher(owner), stale, budget=None))
    finally:
        with contextlib.suppress(redis.RedisError):
            get_redis().delete(_backfill_key(owner.pk))
