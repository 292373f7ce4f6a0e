"""Usage at scale: the /usage page of a heavy user, and the write per finished turn.

Seeds 1,000,000 usage events (90 days, 5,000 users, skewed so a few users are heavy) into a
PostgreSQL database of its own, with the rollups the write path maintains, then measures:

- GET /usage/ (this month and last 30 days) for the heaviest user: target <= 50 ms p95;
- usage_record(), the write per finished turn (event + both rollups + ledgers in one
  transaction): target <= 2 ms p95. It runs after the stream has ended, off the token path.

Every event goes through usage_record, the write a finished chat turn makes (one prepared
statement: the event, both rollups, the operator rollups), with the clock set to the event's
moment so the events spread over the 90 days. Users are bulk-created; each gets one provider
key (bulk-created with a fake secret: nothing here opens it) and 20 conversations with sealed
titles (the page opens those it lists). The events are written by BENCH_WORKERS (default 4)
processes, each with its own users and its own database connection, 500 calls per
transaction, with progress every 10 s. `usage_reconcile --check` then proves every rollup row
equals its events, and the heavy user's rollup turns are checked against its event count.
Here (2 cores) the million events take about 6 minutes (~2,850 a second, keys and
conversations included), the whole seed about 7 with the check, VACUUM and CHECKPOINT;
--quick about 1 minute.

    .venv/bin/python bench/bench_usage.py          # BENCH_QUICK=1 (or --quick): 100,000 events
    .venv/bin/python bench/bench_usage.py --keep   # keep the seeded database afterwards
    .venv/bin/python bench/bench_usage.py --reuse  # measure again on a kept database

Needs PostgreSQL on 127.0.0.1:5432 (user postgres); creates and drops `byok_bench_usage`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "byok_bench_usage"
QUICK = os.environ.get("BENCH_QUICK") == "1" or "--quick" in sys.argv
KEEP = "--keep" in sys.argv or "--reuse" in sys.argv
REUSE = "--reuse" in sys.argv
EVENTS = 100_000 if QUICK else 1_000_000
USERS = 5_000
DAYS = 90

os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{DB_NAME}"
os.environ["DJANGO_SETTINGS_MODULE"] = "byok_site.settings_test"
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,localhost")
sys.path.insert(0, str(ROOT))


def psql(sql: str, database: str = "postgres") -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-q", "-c", sql],
        check=True,
        capture_output=True,
    )


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 20 else max(values)


def database_exists() -> bool:
    found = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-tAc",
         f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"],  # noqa: S608
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    return found.stdout.strip() == "1"


MODELS = ("gpt-4.1", "gpt-4o-mini", "gpt-5-mini", "gpt-5", "gpt-4.1-mini")
CONVERSATIONS_PER_USER = 20
WORKERS = int(os.environ.get("BENCH_WORKERS", "4"))
BATCH = 500  # usage_record calls per transaction while seeding


def event_counts() -> list[int]:
    """Events per user, heaviest first: user i gets the share of random()^3 landing on it
    (the first user about 5.8% of all events, the last about 0.007%)."""
    edges = [round(EVENTS * (i / USERS) ** (1 / 3)) for i in range(USERS + 1)]
    return [edges[i + 1] - edges[i] for i in range(USERS)]


def seed_worker(
    worker: int,
    shares: list[tuple[int, int]],
    done: Synchronized[int],
    in_step: threading.Barrier,
) -> None:
    """Seed the events of some users, each through usage_record, in its own process.

    Users are split between the workers, so no two touch the same user's rows; the workers
    walk the 90 days in step, each from its own starting day, so no two write the operator
    rollups of one day (a row per day) at once; a deadlock left is retried. The clock is set
    per event: usage_record takes the day and created_at from timezone.now().
    """
    import django

    django.setup()
    from django.db import OperationalError, connection, transaction
    from django.utils import timezone

    from accounts.models import User
    from chat.models import PURPOSE_TITLE, Conversation
    from keys.models import ProviderKey
    from usage.prices import TokenCounts, price_for
    from usage.recording import TurnUsage, usage_record
    from vault.services import OwnerCipher

    rng = random.Random(worker)
    owners = User.objects.in_bulk([owner_id for owner_id, _ in shares])
    now = timezone.now()
    today = timezone.localdate(now)
    midnights = [
        timezone.make_aware(datetime.combine(today - timedelta(days=ago), dt_time()))
        for ago in range(DAYS)
    ]
    conversations: dict[int, list[uuid.UUID]] = {}
    keys: dict[int, tuple[uuid.UUID, str]] = {}
    new_keys, new_conversations = [], []
    for owner_id, _ in shares:
        owner = owners[owner_id]
        # Nothing opens these keys: /usage and usage_record only carry the key's id and label.
        key = ProviderKey(
            owner=owner,
            preset="openai",
            label=f"Key {owner_id}",
            base_url="https://api.openai.com/v1",
            sealed_secret=b"bench: not a sealed secret",
            fingerprint="sk-...bench",
            status=ProviderKey.Status.VALID,
        )
        new_keys.append(key)
        keys[owner_id] = (key.pk, key.label)
        # Titles sealed for real: /usage opens those of its by-conversation table.
        cipher = OwnerCipher(owner)
        conversations[owner_id] = []
        for n in range(CONVERSATIONS_PER_USER):
            conversation = Conversation(owner=owner, preset="openai", model=MODELS[n % 5])
            title = f"Bench chat {n}"
            conversation.sealed_title = cipher.seal(PURPOSE_TITLE, conversation.pk, title)
            new_conversations.append(conversation)
            conversations[owner_id].append(conversation.pk)
    ProviderKey.objects.bulk_create(new_keys, batch_size=1000)
    Conversation.objects.bulk_create(new_conversations, batch_size=1000)

    # Each worker walks the days from its own starting day, all in step (a barrier per day):
    # while one writes a day's operator rollups, the others are 22 days away from it. Newest
    # day first: a user's last active day is then set once and seldom moves, and moving it
    # is what touches an older day's activity row (where another worker may be).
    start = worker * DAYS // WORKERS
    days: list[list[tuple[float, int, int]]] = [[] for _ in range(DAYS)]
    for owner_id, count in shares:
        for _ in range(count):
            ago = rng.randrange(DAYS)
            days[(ago - start) % DAYS].append((rng.random(), ago, owner_id))
    clock = [now]
    prices = {model: price_for("openai", model) for model in MODELS}

    def record(batch: list[tuple[float, int, int]], offset: int) -> None:
        with transaction.atomic():
            for g, (fraction, ago, owner_id) in enumerate(batch, offset):
                span = 86400 if ago else (now - midnights[0]).total_seconds()
                clock[0] = midnights[ago] + timedelta(seconds=fraction * span)
                key_id, key_label = keys[owner_id]
                error = g % 50 == 0
                usage_record(
                    turn=TurnUsage(
                        owner_id=owner_id,
                        message_id=uuid.uuid4(),
                        conversation_id=conversations[owner_id][g % 20],
                        key_id=key_id,
                        key_label=key_label,
                        preset="openai",
                        model=MODELS[g % 5],
                        status="error" if error else "done",
                        error_kind="unavailable" if error else "",
                        tokens=TokenCounts(
                            input=800 + g % 1200, output=200 + g % 600, cached=g % 300
                        ),
                        reasoning_tokens=0,
                        ttft_ms=300 + g % 700,
                        latency_ms=1500 + g % 4000,
                        price=prices[MODELS[g % 5]],
                    )
                )

    g = 0
    with mock.patch("django.utils.timezone.now", lambda: clock[0]):
        for day in days:
            day.sort()
            for first in range(0, len(day), BATCH):
                batch = day[first : first + BATCH]
                for attempt in range(20):
                    try:
                        record(batch, g)
                        break
                    except OperationalError:  # a deadlock after all: run the batch again
                        if attempt == 19:
                            raise
                        print(f"  worker {worker}: deadlock, retrying a batch", flush=True)
                        time.sleep(rng.random())
                g += len(batch)
                with done.get_lock():
                    done.value += len(batch)
            in_step.wait(timeout=600)
    connection.close()


def seed() -> float:
    """Users, then every event through usage_record in parallel processes; returns the
    seconds it took (vacuum and checkpoint included)."""
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import User

    started = time.monotonic()
    User.objects.bulk_create(
        # "!" is Django's unusable-password marker: these users cannot log in.
        [User(email=f"u{i}@bench.local", password="!") for i in range(1, USERS + 1)],  # noqa: S106
        batch_size=2000,
    )
    user_ids = list(User.objects.order_by("id").values_list("id", flat=True))
    # Heaviest users first, each to the worker with the fewest events so far.
    shares: list[list[tuple[int, int]]] = [[] for _ in range(WORKERS)]
    totals = [0] * WORKERS
    for owner_id, count in zip(user_ids, event_counts(), strict=True):
        lightest = totals.index(min(totals))
        shares[lightest].append((owner_id, count))
        totals[lightest] += count
    connection.close()  # nothing open is handed to the workers
    context = multiprocessing.get_context("spawn")
    done = context.Value("q", 0)
    in_step = context.Barrier(WORKERS)
    workers = [
        context.Process(target=seed_worker, args=(n, shares[n], done, in_step))
        for n in range(WORKERS)
    ]
    for process in workers:
        process.start()
    events_started = last_time = time.monotonic()
    last_done = 0
    while any(process.is_alive() for process in workers):
        time.sleep(1)
        if any(process.exitcode for process in workers):
            in_step.abort()  # the others stop waiting for the failed one
        now = time.monotonic()
        value = done.value
        if now - last_time >= 10 or (value == EVENTS and last_done != EVENTS):
            rate = (value - last_done) / (now - last_time)
            print(
                f"  seeded {value:,} / {EVENTS:,} events: {rate:,.0f}/s now, "
                f"{value / (now - events_started):,.0f}/s overall"
                + (" (the workers are creating keys and conversations)" if not value else ""),
                flush=True,
            )
            last_time, last_done = now, value
    for process in workers:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"a seeding worker failed (exit code {process.exitcode})")
    events_seconds = time.monotonic() - events_started
    print(
        f"  {done.value:,} events through usage_record in {events_seconds:.0f} s "
        f"({done.value / events_seconds:,.0f}/s, {WORKERS} processes)",
        flush=True,
    )
    # usage_reconcile --check: every rollup row equals its events (exits 1 if not).
    checked = time.monotonic()
    call_command("usage_reconcile", "--check")
    print(f"  usage_reconcile --check: {time.monotonic() - checked:.0f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    # Measure a settled database, not one still writing a million rows' pages out: vacuum
    # (hint bits, visibility map) and checkpoint now rather than during the measurements.
    connection.close()
    psql("VACUUM", DB_NAME)
    psql("CHECKPOINT", DB_NAME)
    return time.monotonic() - started


def main() -> None:
    reuse = REUSE and database_exists()
    if not reuse:
        psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        psql(f"CREATE DATABASE {DB_NAME}")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True
    )
    import django

    django.setup()
    from django.db import connection, transaction
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from accounts.models import User
    from usage.models import UsageDaily, UsageEvent
    from usage.prices import TokenCounts, price_for
    from usage.recording import TurnUsage, usage_record

    seed_seconds = 0.0 if reuse else seed()

    heavy_id = (
        UsageEvent.objects.values("owner_id")
        .order_by()
        .annotate(n=django.db.models.Count("id"))
        .order_by("-n")
        .first()
    )
    assert heavy_id is not None
    heavy = User.objects.get(pk=heavy_id["owner_id"])
    heavy_events = heavy_id["n"]
    rollup_turns = UsageDaily.objects.filter(owner=heavy).aggregate(
        t=django.db.models.Sum("turns")
    )["t"]
    assert rollup_turns == heavy_events, (rollup_turns, heavy_events)

    client = Client()
    client.force_login(heavy)
    page_times: dict[str, list[float]] = {}
    for label, query in (("this month", {}), ("last 30 days", {"period": "30d"})):
        client.get("/usage/", query)  # warm-up
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            response = client.get("/usage/", query)
            times.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200
        page_times[label] = times

    def a_turn(owner: User) -> TurnUsage:
        return TurnUsage(
            owner_id=owner.pk,
            message_id=uuid.uuid4(),
            conversation_id=uuid.uuid4(),
            key_id=uuid.uuid4(),
            key_label="bench",
            preset="openai",
            model="gpt-4.1",
            status="done",
            error_kind="",
            tokens=TokenCounts(input=1000, output=300, cached=100),
            reasoning_tokens=0,
            ttft_ms=400,
            latency_ms=2000,
            price=price_for("openai", "gpt-4.1"),
        )

    writers = list(User.objects.order_by("?").values_list("id", flat=True)[:200])
    users = {u.pk: u for u in User.objects.filter(pk__in=writers)}
    write_times = []
    for i in range(1000):
        turn = a_turn(users[writers[i % len(writers)]])
        t0 = time.perf_counter()
        usage_record(turn=turn)  # its own transaction: the commit is timed too
        write_times.append((time.perf_counter() - t0) * 1000)
    # Informational: as chat.turns calls it, inside the transaction that stores the turn
    # (whose commit happens anyway).
    inner_times = []
    for i in range(1000):
        turn = a_turn(users[writers[i % len(writers)]])
        with transaction.atomic():
            t0 = time.perf_counter()
            usage_record(turn=turn)
            inner_times.append((time.perf_counter() - t0) * 1000)
    counted = a_turn(users[writers[0]])  # its price looked up first, as a turn's start does
    with CaptureQueriesContext(connection) as captured:
        usage_record(turn=counted)
    statements = len(captured.captured_queries)
    # Informational: the first /usage after one of the heavy user's turns (nothing cached).
    miss_times = []
    for _ in range(30):
        usage_record(turn=a_turn(heavy))
        t0 = time.perf_counter()
        response = client.get("/usage/")
        miss_times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200
    connection.close()
    if hasattr(connection, "close_pool"):  # PostgreSQL's connection pool (Django 5.1+)
        connection.close_pool()
    if not KEEP:
        psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")

    rows = [
        ("events seeded", f"{EVENTS:,} over {DAYS} days, {USERS:,} users", "", ""),
        ("seeding time", f"{seed_seconds:.1f} s" if seed_seconds else "reused", "", ""),
        ("heavy user's events", f"{heavy_events:,}", "", ""),
    ]
    results: dict[str, object] = {
        "events": EVENTS,
        "users": USERS,
        "heavy_user_events": heavy_events,
    }
    for label, times in page_times.items():
        value = p95(times)
        results[f"usage_page_{label.replace(' ', '_')}_p95_ms"] = round(value, 2)
        results[f"usage_page_{label.replace(' ', '_')}_p50_ms"] = round(statistics.median(times), 2)
        rows.append(
            (
                f"/usage ({label}) p95",
                f"{value:.1f} ms (p50 {statistics.median(times):.1f})",
                "<= 50 ms",
                "pass" if value <= 50 else "MISS",
            )
        )
    write_p95 = p95(write_times)
    results["write_per_turn_p95_ms"] = round(write_p95, 3)
    results["write_per_turn_p50_ms"] = round(statistics.median(write_times), 3)
    rows.append(
        (
            "write per finished turn p95",
            f"{write_p95:.2f} ms (p50 {statistics.median(write_times):.2f})",
            "<= 2 ms",
            "pass" if write_p95 <= 2 else "MISS",
        )
    )
    results["write_in_callers_transaction_p95_ms"] = round(p95(inner_times), 3)
    results["write_in_callers_transaction_p50_ms"] = round(statistics.median(inner_times), 3)
    results["write_statements"] = statements
    results["usage_page_after_a_turn_p95_ms"] = round(p95(miss_times), 2)
    results["usage_page_after_a_turn_p50_ms"] = round(statistics.median(miss_times), 2)
    rows += [
        (
            "  in the caller's transaction",
            f"{p95(inner_times):.2f} ms (p50 {statistics.median(inner_times):.2f})",
            "",
            "info",
        ),
        ("  SQL statements per write", f"{statements}", "", "info"),
        (
            "/usage after a new turn p95",
            f"{p95(miss_times):.1f} ms (p50 {statistics.median(miss_times):.1f})",
            "",
            "info",
        ),
    ]
    print(
        f"\nbench_usage ({'quick' if QUICK else 'full'}) on PostgreSQL, {time.strftime('%Y-%m-%d')}"
    )
    print(f"{'figure':32} {'measured':34} {'target':10} result")
    for name, measured, target, result in rows:
        print(f"{name:32} {measured:34} {target:10} {result}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "usage.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
