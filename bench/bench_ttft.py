"""Added time to first token: what the relay (web POST, Celery, worker, Redis, SSE) adds to
the provider's own TTFT, at 1 and at 100 concurrent turns.

A client POSTs a message as the chat page does, opens the turn's SSE stream, and times the
first `delta` event from the moment it sent the POST. The same fake-provider script is also
called directly (httpx streaming POST to /v1/chat/completions) at the same concurrency;
added TTFT = relayed TTFT - median direct TTFT.

    .venv/bin/python bench/bench_ttft.py [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
from harness import (
    CpuMeter,
    DirectCall,
    Figure,
    Stack,
    Turn,
    apply_overrides,
    attach_db_times,
    attach_timings,
    direct_call,
    figure,
    ms,
    new_client,
    parse_args,
    pct,
    phase,
    print_table,
    reply_text,
    run,
    run_turn_httpx,
    say,
    staggered,
    summary_ms,
    unique_email,
    write_results,
)

TARGET_P50_1 = 5.0
TARGET_P95_1 = 10.0
TARGET_P95_100 = 25.0
TURN_TIMEOUT = 60.0


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "single_turns": 8,
            "warmup": 2,
            "levels": [10, 20],
            "rounds": 2,
            "reply_tokens": 60,
            "burst": 20,
        }
    return {
        "single_turns": 30,
        "warmup": 3,
        "levels": [10, 100],  # concurrent turns (target checked at 100); try 10,25,50,100
        "rounds": 2,
        "reply_tokens": 200,  # 4 s at 50 tokens/s
        "burst": 100,
    }


# A provider that takes 200 ms to its first token: the web POST and the SSE GET overlap it,
# as they do with real models; what is left is Celery dispatch, the worker and the relay.
SINGLE_SCRIPT = {
    "text": reply_text(20),
    "first_token_delay": 0.2,
    "tokens_per_second": 200,
    "tokens_per_chunk": 1,
}


def concurrent_script(tokens: int) -> dict[str, Any]:
    return {
        "text": reply_text(tokens),
        "first_token_delay": 0.2,
        "tokens_per_second": 50,
        "tokens_per_chunk": 1,
    }


def breakdown(turns: list[Turn], direct: list[DirectCall]) -> dict[str, dict[str, float]]:
    """Where the time goes: client times, the reply row's created_at/started_at and the fake's
    timestamps, all on the machine's monotonic clock. p50/p95 in ms per stage."""
    timed = [t for t in turns if t.ok and t.t_first and t.fake.get("first")]
    with_db = [t for t in timed if "created" in t.db and "started" in t.db]
    called = [d for d in direct if d.error is None and d.t_first and d.fake.get("first")]
    stages: dict[str, list[float]] = {
        "relay: POST answered": [t.t_posted - t.t_start for t in timed],
        "relay: SSE headers after POST answered": [t.t_opened - t.t_posted for t in timed],
        "relay: POST sent -> reply row created": [t.db["created"] - t.t_start for t in with_db],
        "relay: row created -> worker claimed": [
            t.db["started"] - t.db["created"] for t in with_db
        ],
        "relay: claimed -> provider request": [
            t.fake["arrived"] - t.db["started"] for t in with_db
        ],
        "relay: POST sent -> provider request": [t.fake["arrived"] - t.t_start for t in timed],
        "relay: provider TTFT": [t.fake["first"] - t.fake["arrived"] for t in timed],
        "relay: provider token -> client delta": [
            (t.t_first or 0) - t.fake["first"] for t in timed
        ],
        "relay:   provider token -> XADD (worker)": [
            t.xadd_first - t.fake["first"] for t in timed if t.xadd_first
        ],
        "relay:   XADD -> client delta (Redis, web)": [
            (t.t_first or 0) - t.xadd_first for t in timed if t.xadd_first
        ],
        "direct: request -> provider request": [d.fake["arrived"] - d.t_start for d in called],
        "direct: provider TTFT": [d.fake["first"] - d.fake["arrived"] for d in called],
        "direct: provider token -> client": [(d.t_first or 0) - d.fake["first"] for d in called],
    }
    return {
        name: {"p50": ms(pct(values, 50)), "p95": ms(pct(values, 95)), "n": len(values)}
        for name, values in stages.items()
    }


def print_breakdown(title: str, stages: dict[str, dict[str, float]]) -> None:
    width = max(len(name) for name in stages)
    print(f"{title}\n  {'stage'.ljust(width)}  {'p50 ms':>9}  {'p95 ms':>9}")
    for name, values in stages.items():
        print(f"  {name.ljust(width)}  {values['p50']:>9.2f}  {values['p95']:>9.2f}")
    print(flush=True)


def added(turns: list[Turn], direct: list[DirectCall]) -> tuple[list[float], float]:
    base = statistics.median([d.ttft for d in direct if d.ttft is not None])
    return [t.ttft - base for t in turns if t.ok and t.ttft is not None], base


def in_flight_at_start(spans: list[tuple[float, float]]) -> list[int]:
    """For each (start, end), how many spans (itself included) were open at its start."""
    return [sum(1 for start, end in spans if start <= begin <= end) for begin, _ in spans]


async def single(stack: Stack, cookies: dict[str, str], conversations: list[str], n: dict) -> Any:
    warm, count = n["warmup"], n["single_turns"]
    async with httpx.AsyncClient(base_url=stack.fake_url, trust_env=False, timeout=30) as fake:
        stack.fake_script(warm + count, **SINGLE_SCRIPT)
        direct = [await direct_call(fake, "Hello", TURN_TIMEOUT) for _ in range(warm + count)]
        attach_timings(stack, direct)
    async with new_client(cookies, stack.web_url) as client:
        stack.fake_script(warm + count, **SINGLE_SCRIPT)
        turns = []
        for conversation in conversations[:warm]:
            turns.append(await run_turn_httpx(client, conversation, "Hello", TURN_TIMEOUT))
        meter = CpuMeter(stack.pids())
        for conversation in conversations[warm : warm + count]:
            turns.append(await run_turn_httpx(client, conversation, "Hello", TURN_TIMEOUT))
            await asyncio.sleep(0.05)
        cpu: dict[str, Any] = {
            name: round(1000 * sec / count, 1) for name, sec in meter.seconds().items()
        }
        cpu["other processes, % of a core"] = meter.read()["other"]
        attach_timings(stack, turns)
    return direct[warm:], turns[warm:], cpu


async def concurrent(
    stack: Stack, cookies: dict[str, str], conversations: list[str], n: dict, clients: int
) -> dict[str, Any]:
    """`clients` clients, each sending `rounds` turns back to back, their starts spread over
    one reply's length: a steady state with `clients` turns in flight. The direct baseline
    runs the same way (one round) just before."""
    rounds = n["rounds"]
    script = concurrent_script(n["reply_tokens"])
    spread = n["reply_tokens"] / 50

    with phase(f"direct calls, {clients} concurrent"):
        stack.fake_script(clients, **script)
        meter = CpuMeter(stack.pids())
        async with httpx.AsyncClient(
            base_url=stack.fake_url,
            trust_env=False,
            timeout=TURN_TIMEOUT,
            limits=httpx.Limits(max_connections=clients, max_keepalive_connections=clients),
        ) as fake:
            direct = await staggered(
                clients, spread, lambda i: direct_call(fake, "Hello", TURN_TIMEOUT)
            )
        direct_cpu = meter.read()
        attach_timings(stack, direct)

    async def relay_client(client: httpx.AsyncClient, conversation: str) -> list[Turn]:
        return [
            await run_turn_httpx(client, conversation, "Hello", TURN_TIMEOUT) for _ in range(rounds)
        ]

    with phase(f"relayed turns, {clients} concurrent"):
        stack.fake_script(clients * rounds, **script)
        meter = CpuMeter(stack.pids())
        async with new_client(cookies, stack.web_url, connections=2 * clients + 10) as client:
            nested = await staggered(
                clients, spread, lambda i: relay_client(client, conversations[i])
            )
        relay_cpu = meter.read()
        turns = [turn for group in nested for turn in group]
        attach_timings(stack, turns)

    # Count only turns sent while (nearly) every client had a turn in flight.
    floor = int(clients * 0.95)
    flight = in_flight_at_start([(t.t_start, t.t_done or t.t_start) for t in turns])
    steady = [t for t, f in zip(turns, flight, strict=True) if f >= floor]
    flight_d = in_flight_at_start([(d.t_start, d.t_end or d.t_start) for d in direct])
    steady_direct = [d for d, f in zip(direct, flight_d, strict=True) if f >= floor]
    return {
        "clients": clients,
        "direct": steady_direct or direct,
        "turns": steady or turns,
        "all_turns": turns,
        "cpu_direct": direct_cpu,
        "cpu_relay": relay_cpu,
        "in_flight_median": statistics.median(flight) if flight else 0,
    }


async def burst(stack: Stack, cookies: dict[str, str], conversations: list[str], n: dict) -> Any:
    """Every client sends at the same instant: the worst case for dispatch."""
    count = n["burst"]
    script = concurrent_script(20)
    stack.fake_script(count, **script)
    async with httpx.AsyncClient(
        base_url=stack.fake_url,
        trust_env=False,
        timeout=TURN_TIMEOUT,
        limits=httpx.Limits(max_connections=count, max_keepalive_connections=count),
    ) as fake:
        direct = await asyncio.gather(
            *(direct_call(fake, "Hello", TURN_TIMEOUT) for _ in range(count))
        )
    attach_timings(stack, list(direct))  # before the next script resets the fake's records
    stack.fake_script(count, **script)
    meter = CpuMeter(stack.pids())
    async with new_client(cookies, stack.web_url, connections=2 * count + 10) as client:
        turns = await asyncio.gather(
            *(run_turn_httpx(client, c, "Hello", TURN_TIMEOUT) for c in conversations[:count])
        )
    cpu = meter.read()
    attach_timings(stack, list(turns))
    return list(direct), list(turns), cpu


def errors_of(turns: list[Turn]) -> list[str]:
    return sorted({t.error or f"final={t.final}" for t in turns if not t.ok})[:5]


def main() -> None:
    args = parse_args(__doc__ or "")
    n = apply_overrides(sizes(args.quick), args)
    started = time.monotonic()
    top = max(n["levels"])
    # Worker: a thread per concurrent turn (plus spare); the brief asks for >= 100.
    concurrency = max(128, top + 28)
    levels: list[dict[str, Any]] = []
    with Stack("ttft", worker_concurrency=concurrency, keep=args.keep) as stack:
        with phase("setup: user, key, conversations, sign-in"):
            user = stack.create_user(unique_email("ttft"))
            key = stack.create_key(user)
            stack.wait_keys_checked([key])
            conversations = stack.create_conversations(user, key, n["single_turns"] + n["warmup"])
            cookies = stack.login(user.email)

        with phase("1 concurrent turn"):
            direct1, turns1, cpu1 = asyncio.run(single(stack, cookies, conversations, n))
            attach_db_times(turns1)
        stack.check_alive()
        for clients in n["levels"]:
            # Fresh conversations per level, so every turn has the same short history.
            conversations = stack.create_conversations(user, key, clients)
            level = asyncio.run(concurrent(stack, cookies, conversations, n, clients))
            attach_db_times(level["all_turns"])
            levels.append(level)
            stack.check_alive()
        conversations = stack.create_conversations(user, key, n["burst"])
        with phase(f"burst of {n['burst']} simultaneous sends"):
            direct_b, turns_b, cpu_b = asyncio.run(burst(stack, cookies, conversations, n))
            attach_db_times(turns_b)
        stack.check_alive()

    added1, base1 = added(turns1, direct1)
    added_b, _ = added(turns_b, direct_b)
    figures: list[Figure] = [
        figure(
            "added TTFT, 1 turn, p50",
            ms(pct(added1, 50)),
            "ms",
            at_most=TARGET_P50_1,
            note=f"{len(added1)} turns; direct TTFT p50 {ms(base1)} ms",
        ),
        figure("added TTFT, 1 turn, p95", ms(pct(added1, 95)), "ms", at_most=TARGET_P95_1),
    ]
    level_json = []
    for level in levels:
        c = level["clients"]
        values, base = added(level["turns"], level["direct"])
        level["added"] = values
        figures.append(
            figure(
                f"added TTFT, {c} concurrent, p95",
                ms(pct(values, 95)),
                "ms",
                at_most=TARGET_P95_100 if c == 100 else None,
                note=(
                    f"p50 {ms(pct(values, 50))} ms; {len(values)} turns sent with >= "
                    f"{int(c * 0.95)} in flight; direct TTFT p50 {ms(base)} ms; "
                    f"CPU % of a core: {level['cpu_relay']}"
                ),
            )
        )
        level_json.append(
            {
                "concurrent": c,
                "added_ttft_ms": summary_ms(values),
                "direct_ttft_ms": summary_ms(
                    [d.ttft for d in level["direct"] if d.ttft is not None]
                ),
                "in_flight_median": level["in_flight_median"],
                "failed": len([t for t in level["all_turns"] if not t.ok]),
                "breakdown_ms": breakdown(level["turns"], level["direct"]),
                "cpu_percent_of_one_core": {
                    "relayed": level["cpu_relay"],
                    "direct": level["cpu_direct"],
                },
            }
        )
    failed = [t for t in turns1 + turns_b if not t.ok]
    failed += [t for level in levels for t in level["all_turns"] if not t.ok]
    figures += [
        figure(
            f"added TTFT, burst of {n['burst']}, p95",
            ms(pct(added_b, 95)),
            "ms",
            note=f"all sent at once (informational); p50 {ms(pct(added_b, 50))} ms",
        ),
        figure(
            "failed turns", float(len(failed)), "", at_most=0, note="; ".join(errors_of(failed))
        ),
    ]
    title = "bench_ttft" + (" (QUICK: sizes reduced, targets not meaningful)" if args.quick else "")
    print_table(title, figures)
    print_breakdown("where the time goes (1 turn)", breakdown(turns1, direct1))
    say(f"CPU ms per turn (1 turn at a time, 20 tokens): {cpu1}")
    if levels:
        print_breakdown(
            f"where the time goes ({levels[-1]['clients']} concurrent)",
            breakdown(levels[-1]["turns"], levels[-1]["direct"]),
        )
    print_breakdown(f"where the time goes (burst of {n['burst']})", breakdown(turns_b, direct_b))
    write_results(
        "ttft",
        {
            "quick": args.quick,
            "sizes": n,
            "worker_concurrency": concurrency,
            "scripts": {
                "single": {**SINGLE_SCRIPT, "text": "20 tokens"},
                "concurrent": {**concurrent_script(0), "text": f"{n['reply_tokens']} tokens"},
            },
            "figures": [f.as_json() for f in figures],
            "single": {
                "cpu_ms_per_turn": cpu1,
                "added_ttft_ms": summary_ms(added1),
                "direct_ttft_ms": summary_ms([d.ttft for d in direct1 if d.ttft is not None]),
                "breakdown_ms": breakdown(turns1, direct1),
            },
            "levels": level_json,
            "burst": {
                "added_ttft_ms": summary_ms(added_b),
                "breakdown_ms": breakdown(turns_b, direct_b),
                "cpu_percent_of_one_core": cpu_b,
            },
            "service_errors": stack.errors,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    say(f"done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    run(main)
