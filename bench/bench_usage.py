"""Usage at scale: the /usage page of a heavy user, and the write per finished turn.

Seeds 1,000,000 usage events (90 days, 5,000 users, skewed so a few users are heavy) into a
PostgreSQL database of its own, with the rollups the write path maintains, then measures:

- GET /usage/ (this month and last 30 days) for the heaviest user: target <= 50 ms p95;
- usage_record(), the write per finished turn (event + both rollups + ledgers in one
  transaction): target <= 2 ms p95. It runs after the stream has ended, off the token path.

The million rows are seeded in bulk SQL (INSERT ... SELECT over generate_series), and the
rollups are built from them with the same grouping the write path uses; `usage_reconcile
--check` style equality is asserted on the heavy user. Seeding through usage_record itself
would take about an hour here; its cost is what the second measurement shows.

    .venv/bin/python bench/bench_usage.py          # BENCH_QUICK=1 (or --quick): 100,000 events
    .venv/bin/python bench/bench_usage.py --keep   # keep the seeded database afterwards
    .venv/bin/python bench/bench_usage.py --reuse  # measure again on a kept database

Needs PostgreSQL on 127.0.0.1:5432 (user postgres); creates and drops `byok_bench_usage`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

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


def seed() -> float:
    """Users, events and their rollups in bulk SQL; returns the seconds it took."""
    from django.db import connection

    from accounts.models import User

    started = time.monotonic()
    User.objects.bulk_create(
        # "!" is Django's unusable-password marker: these users cannot log in.
        [User(email=f"u{i}@bench.local", password="!") for i in range(1, USERS + 1)],  # noqa: S106
        batch_size=2000,
    )
    first_id = User.objects.order_by("id").values_list("id", flat=True).first()
    with connection.cursor() as cursor:
        # Owner index skewed by random()^3: the first users are heavy, most are light.
        # Only integers of this script are interpolated.
        cursor.execute(
            f"""
            INSERT INTO usage_usageevent (
                owner_id, message_id, conversation_id, key_id, key_label, preset, model, status,
                error_kind, input_tokens, output_tokens, cached_tokens, cache_write_tokens,
                reasoning_tokens, price_input, price_output, price_cache_read, cost_micro,
                ttft_ms, latency_ms, day, created_at)
            SELECT {first_id} + o, gen_random_uuid(),
                   md5(o || '-' || (g % 20))::uuid, md5('key-' || o)::uuid, 'Key ' || o,
                   'openai',
                   (ARRAY['gpt-4.1','gpt-4o-mini','gpt-5-mini','gpt-5','gpt-4.1-mini'])[1 + g % 5],
                   CASE WHEN g % 50 = 0 THEN 'error' ELSE 'done' END, '',
                   800 + g % 1200, 200 + g % 600, g % 300, 0, 0,
                   2000000, 8000000, 500000, (800 + g % 1200) * 2 + (200 + g % 600) * 8,
                   300 + g % 700, 1500 + g % 4000,
                   current_date - (g % {DAYS}), now() - ((g % {DAYS}) || ' days')::interval
            FROM (SELECT g, floor({USERS} * power(random(), 3))::int AS o
                  FROM generate_series(1, {EVENTS}) AS g) AS s
            """  # noqa: S608
        )
        cursor.execute(
            """
            INSERT INTO usage_usagedaily (owner_id, day, key_id, key_label, preset, model, turns,
                errors, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost_micro,
                unpriced_turns)
            SELECT owner_id, day, key_id, max(key_label), max(preset), model, count(*),
                   count(*) FILTER (WHERE status = 'error'), sum(input_tokens),
                   sum(output_tokens), sum(cached_tokens), sum(reasoning_tokens),
                   sum(cost_micro), 0
            FROM usage_usageevent GROUP BY owner_id, day, key_id, model
            """
        )
        cursor.execute(
            """
            INSERT INTO usage_usageconversationdaily (owner_id, day, conversation_id, turns,
                input_tokens, output_tokens, cost_micro, unpriced_turns)
            SELECT owner_id, day, conversation_id, count(*), sum(input_tokens),
                   sum(output_tokens), sum(cost_micro), 0
            FROM usage_usageevent GROUP BY owner_id, day, conversation_id
            """
        )
        # What usage_record keeps beside the rollups: each owner's rollup stamp.
        cursor.execute(
            """
            INSERT INTO usage_rollupstamp (owner_id, stamp)
            SELECT owner_id, gen_random_uuid()
            FROM (SELECT DISTINCT owner_id FROM usage_usagedaily) AS owners
            """
        )
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
    from usage.prices import TokenCounts
    from usage.services import TurnUsage, usage_record

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
            owner=owner,
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
    with CaptureQueriesContext(connection) as captured:
        usage_record(turn=a_turn(users[writers[0]]))
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
