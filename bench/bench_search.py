"""Search at scale: one user with 2,000 conversations and 20,000 sealed messages.

Seeds a fresh database (SQLite in a temp dir, or with BENCH_DATABASE=postgres a database of
its own on 127.0.0.1:5432, dropped at the end) through the ORM in bulk: the conversations
(titles from their first message, sealed, last messages spread over 90 days) and ten
messages each, user and reply in turn, every one sealed with the user's data key exactly
like a real message (`OwnerCipher.seal`, purpose "message", bound to its row). A second user
gets a conversation holding every searched word, which must never show. Then, through the
Django test client as the signed-in user, with a real (bundled) Redis:

- GET /chat/search/?q=… (the sidebar's live search) for queries that hit (a rare word, a
  word in 1 % of the messages, two words that meet in one message, a word in a title, a
  common word that fills the page of results) and queries that miss (a word nowhere, two
  words never in one message, a 10,000-character query): 20 timed requests of each after
  two warm-ups. Target: p95 <= 300 ms over all of them, hits and misses alike.
- GET /chat/ (the grouped sidebar: every title opened), reported.

    .venv/bin/python bench/bench_search.py                         # SQLite
    BENCH_DATABASE=postgres .venv/bin/python bench/bench_search.py  # PostgreSQL
    BENCH_QUICK=1 ...                                               # 10x smaller
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from harness import (  # noqa: E402
    figure,
    machine_info,
    ms,
    pct,
    print_table,
    say,
    wait_for_quiet,
    write_results,
)

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0") or "--quick" in sys.argv
CONVERSATIONS = 200 if QUICK else 2_000
MESSAGES_PER_CONVERSATION = 10
REPEAT = 20
WARMUP = 2
TARGET_MS = 300.0
DATABASE = os.environ.get("BENCH_DATABASE", "sqlite")
PG_NAME = os.environ.get("BENCH_PG_NAME", f"byok_bench_search_{os.getpid()}")

# Planted words: how many messages (of 20,000) hold each.
RARE = "kubernetes"  # 20 messages
PERCENT = "photosynthesis"  # 1 % of the messages
PAIR = ("error", "budget")  # each in 2 %, together in 10 messages
TITLE_WORD = "marmalade"  # in 15 first messages, so in 15 titles
MISS = "zyzzyva"  # nowhere
MISS_PAIR = ("quokka", "ledger")  # each in 1 %, never in the same message

QUERIES = {
    "hit: rare word (20 messages)": RARE,
    "hit: 1 % of messages": PERCENT,
    "hit: two words in 10 messages": " ".join(PAIR),
    "hit: word in 15 titles": TITLE_WORD,
    "hit: common word (fills the results)": "the",
    "hit: prefix typed so far": RARE[:5],
    "miss: word nowhere": MISS,
    "miss: two words never together": " ".join(MISS_PAIR),
    "miss: 10,000-character query": ("nothing here " * 800)[:10_000],
}


def psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-q", "-c", sql],
        check=True,
        capture_output=True,
    )


def vocabulary(rng: random.Random, size: int = 4_000) -> list[str]:
    """Plausible words (syllables), plus the common English ones real text is full of."""
    syllables = ["ka", "lo", "mi", "ter", "sa", "ven", "dor", "pre", "lin", "ux", "qua", "rel"]
    words = {"".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(size)}
    words -= {RARE, PERCENT, *PAIR, TITLE_WORD, MISS, *MISS_PAIR}
    common = [
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "that",
        "for",
        "it",
        "as",
        "with",
        "was",
        "on",
        "be",
        "by",
        "this",
        "are",
        "or",
        "from",
        "at",
    ]
    return sorted(words) + common * 40


def message_text(rng: random.Random, words: list[str], role: str) -> str:
    """A user message of 40-400 characters or a reply of 400-2,500, Markdown-ish."""
    length = rng.randint(40, 400) if role == "user" else rng.randint(400, 2_500)
    out: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(words)
        if role == "assistant" and rng.random() < 0.01:
            word = f"**{word}**"
        out.append(word)
        size += len(word) + 1
    text = " ".join(out)
    if role == "assistant" and rng.random() < 0.2:
        text = f"## {out[0]}\n\n{text}\n\n```python\nprint({out[-1]!r})\n```"
    return text


def plant(rng: random.Random, texts: list[list[str]]) -> None:
    """Put the searched words into chosen messages (texts[conversation][index])."""
    slots = [(c, i) for c in range(len(texts)) for i in range(len(texts[c]))]
    rng.shuffle(slots)
    total = len(slots)
    scale = total / 20_000
    cursor = 0

    def take(n: int) -> list[tuple[int, int]]:
        nonlocal cursor
        chosen = slots[cursor : cursor + max(1, int(n * scale))]
        cursor += len(chosen)
        return chosen

    def add(slot: tuple[int, int], word: str) -> None:
        c, i = slot
        texts[c][i] = f"{texts[c][i]} {word} {texts[c][i][:80]}"

    for slot in take(20):
        add(slot, f"deploy it on {RARE.capitalize()} now")
    for slot in take(200):
        add(slot, PERCENT)
    for slot in take(10):
        add(slot, f"the {PAIR[0]} {PAIR[1]} is spent")
    for slot in take(390):
        add(slot, PAIR[0])
    for slot in take(390):
        add(slot, PAIR[1])
    for slot in take(200):
        add(slot, MISS_PAIR[0])
    for slot in take(200):
        add(slot, MISS_PAIR[1])
    firsts = list(range(len(texts)))
    rng.shuffle(firsts)
    for c in firsts[: max(1, int(15 * scale))]:
        texts[c][0] = f"{TITLE_WORD.capitalize()} recipe: {texts[c][0]}"


def seed() -> tuple[Any, object]:
    from django.utils import timezone

    from accounts.models import User
    from chat.models import PURPOSE_MESSAGE, PURPOSE_TITLE, Conversation, Message
    from chat.services import _title_from
    from vault.services import OwnerCipher

    rng = random.Random(20261207)
    words = vocabulary(rng)
    user = User.objects.create_user(email="searcher@bench.test", password="x" * 20)
    other = User.objects.create_user(email="other@bench.test", password="x" * 20)
    cipher = OwnerCipher(user)
    roles = ["user", "assistant"] * (MESSAGES_PER_CONVERSATION // 2)
    texts = [[message_text(rng, words, role) for role in roles] for _ in range(CONVERSATIONS)]
    plant(rng, texts)
    now = timezone.now()
    started = time.monotonic()
    conversations = []
    messages = []
    for index, conversation_texts in enumerate(texts):
        last = now - timedelta(minutes=rng.randint(0, 90 * 24 * 60))
        conversation = Conversation(
            owner=user, preset="custom", model="bench-model", last_message_at=last
        )
        conversation.sealed_title = cipher.seal(
            PURPOSE_TITLE, conversation.pk, _title_from(conversation_texts[0])
        )
        conversation.pinned = index < 3
        conversations.append(conversation)
        for position, (role, text) in enumerate(zip(roles, conversation_texts, strict=True)):
            message = Message(
                conversation=conversation,
                owner=user,
                role=role,
                model="bench-model",
                created_at=last - timedelta(seconds=(MESSAGES_PER_CONVERSATION - position) * 30),
            )
            message.sealed_content = cipher.seal(PURPOSE_MESSAGE, message.pk, text)
            messages.append(message)
    Conversation.objects.bulk_create(conversations, batch_size=1_000)
    Message.objects.bulk_create(messages, batch_size=1_000)
    # The other user: every searched word, in a title and a message; none may show.
    other_cipher = OwnerCipher(other)
    leaked = Conversation(owner=other, preset="custom", model="bench-model")
    words_all = f"{RARE} {PERCENT} {' '.join(PAIR)} {TITLE_WORD} {MISS} {' '.join(MISS_PAIR)}"
    leaked.sealed_title = other_cipher.seal(PURPOSE_TITLE, leaked.pk, words_all)
    leaked.save()
    secret = Message(conversation=leaked, owner=other, role="user")
    secret.sealed_content = other_cipher.seal(PURPOSE_MESSAGE, secret.pk, words_all)
    secret.save()
    say(
        f"seeded {len(conversations):,} conversations and {len(messages):,} sealed messages "
        f"({sum(len(t) for c in texts for t in c) / len(messages):,.0f} characters on average) "
        f"in {time.monotonic() - started:.1f} s"
    )
    if DATABASE == "postgres":
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    return user, leaked.pk


def index_figures(user) -> list:
    """The search index built from nothing (what the first searches after this change pay,
    bit by bit), its size, and what the design without an index costs per query: opening
    every message."""
    from django.db.models import Sum
    from django.db.models.functions import Length

    from chat.models import PURPOSE_MESSAGE, ConversationSearchIndex, Message
    from chat.search import search_index_build
    from vault.services import OwnerCipher

    started = time.perf_counter()
    built = search_index_build(owner=user)
    build_seconds = time.perf_counter() - started
    size = ConversationSearchIndex.objects.aggregate(bytes=Sum(Length("bloom")))["bytes"] or 0
    scans = []
    for _ in range(5):
        started = time.perf_counter()
        cipher = OwnerCipher(user)
        rows = Message.objects.filter(owner=user).values_list("id", "sealed_content")
        found = 0
        for message_id, sealed in rows.iterator(chunk_size=2_000):
            found += MISS in cipher.open(PURPOSE_MESSAGE, message_id, sealed).casefold()
        scans.append(time.perf_counter() - started)
    return [
        figure(
            "index built from nothing",
            round(build_seconds, 2),
            "s",
            note=f"{built:,} conversations, {build_seconds / max(1, built) * 1000:.1f} ms each",
        ),
        figure(
            "index size",
            round(size / 1024 / 1024, 2),
            "MB",
            note=f"{size / max(1, built):,.0f} bytes a conversation",
        ),
        figure(
            "no index: open every message, p50",
            ms(pct(scans, 50)),
            "ms",
            note="a miss, 5 runs: the design not chosen",
        ),
    ]


def profile(client) -> None:
    """BENCH_PROFILE=1: a cProfile summary of one search that misses."""
    import cProfile
    import pstats

    client.get(f"/chat/search/?q={MISS}")
    profiler = cProfile.Profile()
    profiler.enable()
    client.get(f"/chat/search/?q={MISS}")
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)


def measure(client, url: str) -> tuple[list[float], str]:
    for _ in range(WARMUP):
        client.get(url)
    times = []
    body = ""
    for _ in range(REPEAT):
        started = time.perf_counter()
        response = client.get(url)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
        body = response.content.decode()
    return times, body


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="byok-bench-search-"))
    from core.embedded_redis import EmbeddedRedis

    redis_server = EmbeddedRedis(tmp / "redis.sock").start()
    if DATABASE == "postgres":
        psql(f'DROP DATABASE IF EXISTS "{PG_NAME}"')
        psql(f'CREATE DATABASE "{PG_NAME}"')
        database_url = f"postgres://postgres@127.0.0.1:5432/{PG_NAME}"
    else:
        database_url = f"sqlite:///{tmp / 'db.sqlite3'}"
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "byok_site.settings_test",
            "DJANGO_DEBUG": "0",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_server.url,
            "DJANGO_ALLOWED_HOSTS": "testserver,localhost",
        }
    )
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.test import Client

        call_command("migrate", verbosity=0)
        user, leaked_id = seed()
        client = Client()
        client.force_login(user)
        others = wait_for_quiet()
        figures = [*index_figures(user)]
        if os.environ.get("BENCH_PROFILE"):
            profile(client)
        every: list[float] = []
        hits: list[float] = []
        misses: list[float] = []
        for label, query in QUERIES.items():
            times, body = measure(client, f"/chat/search/?{_encode(query)}")
            assert str(leaked_id) not in body, "another user's conversation was listed"
            found = body.count("<li>")
            if label.startswith("hit"):
                assert found, (label, "found nothing")
                hits += times
            else:
                assert not found, (label, f"found {found}")
                misses += times
            every += times
            figures.append(
                figure(
                    f"{label}: p95",
                    ms(pct(times, 95)),
                    "ms",
                    note=f"p50 {ms(pct(times, 50))} ms, {found} results",
                )
            )
        figures.append(figure("search, hits: p95", ms(pct(hits, 95)), "ms", at_most=TARGET_MS))
        figures.append(figure("search, misses: p95", ms(pct(misses, 95)), "ms", at_most=TARGET_MS))
        figures.append(figure("search, all: p50", ms(pct(every, 50)), "ms"))
        figures.append(figure("search, all: p95", ms(pct(every, 95)), "ms", at_most=TARGET_MS))
        page, _ = measure(client, "/chat/")
        figures.append(figure("GET /chat/ (grouped sidebar): p95", ms(pct(page, 95)), "ms"))
        title = (
            f"bench_search ({DATABASE}): {CONVERSATIONS:,} conversations, "
            f"{CONVERSATIONS * MESSAGES_PER_CONVERSATION:,} sealed messages, "
            f"{REPEAT} requests per query"
        )
        print_table(title, figures)
        write_results(
            f"search-{DATABASE}",
            {
                "quick": QUICK,
                "database": DATABASE,
                "conversations": CONVERSATIONS,
                "messages": CONVERSATIONS * MESSAGES_PER_CONVERSATION,
                "other_processes_percent_of_a_core": others,
                "figures": figures,
                "machine": machine_info(),
            },
        )
    finally:
        from django.db import connections

        connections.close_all()
        redis_server.stop()
        if DATABASE == "postgres":
            psql(f'DROP DATABASE IF EXISTS "{PG_NAME}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


def _encode(query: str) -> str:
    from urllib.parse import urlencode

    return urlencode({"q": query})


if __name__ == "__main__":
    main()
