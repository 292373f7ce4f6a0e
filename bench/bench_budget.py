"""The CPU budget of the relay targets: what each process spends per turn, measured, and what
the targets' loads would ask of this machine's cores.

The relay's latency targets are met only while the machine has CPU to spare: once the work
queued on the cores outruns them, every stage waits and the figures grow without bound.
This benchmark measures the work per turn and puts it next to the cores there are.

1. Request floor: the cheapest signed-in request (`GET /chat/models/` without a key, an empty
   partial, no query of its own) through the site's whole middleware stack, one at a time:
   round trip and the web's CPU. A turn's `POST` does this much and more before the worker
   can be told, so it bounds the 1-turn added TTFT from below.
2. One turn at a time (20 tokens, as in bench_ttft): CPU per turn of every process.
3. Loads at three sizes (`load_clients`: 20, 40, 60 clients, two turns each, their starts
   spread over one reply), with each target load's script (200 tokens at 50 tokens/s as in
   bench_ttft, 250 as in bench_throughput), relayed and straight to the fake: each process's
   busy cores and the rate of completed turns, averaged over the whole load.
4. Demand: each process's busy cores on the least-squares line through the loads (a fixed
   cost per second plus a cost per turn) at each target's turn rate (bench_ttft's 100
   concurrent turns, bench_throughput's 200), against the machine's cores; the relay's own
   processes (worker, web, Redis) apart; and the fake provider's own share (from the direct
   calls), which any relay needs too. The line is carried three to five times past the
   highest measured rate (the note says how far), so its figures are estimates: more tokens
   per Redis write at higher load lower the cost per turn a little, contention for each
   interpreter's lock raises it.

    .venv/bin/python bench/bench_budget.py [--quick] [--set load_clients=20,40,60]
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
from harness import (
    CpuMeter,
    Figure,
    Stack,
    apply_overrides,
    direct_call,
    figure,
    ms,
    new_client,
    parse_args,
    phase,
    print_table,
    reply_text,
    run,
    run_turn_httpx,
    run_turn_raw,
    say,
    staggered,
    summary_ms,
    unique_email,
    write_results,
)

TURN_TIMEOUT = 90.0
FIRST_TOKEN_DELAY = 0.2
TOKENS_PER_SECOND = 50
# The targets' loads: (benchmark, concurrent turns, tokens per reply, its target).
TARGET_LOADS = [
    ("bench_ttft", 100, 200, "added TTFT p95 <= 25 ms at 100 concurrent turns"),
    ("bench_throughput", 200, 250, ">= 200 turns per worker process, no gap over 200 ms"),
]
SINGLE_SCRIPT = {
    "text": reply_text(20),
    "first_token_delay": FIRST_TOKEN_DELAY,
    "tokens_per_second": 200,
    "tokens_per_chunk": 1,
}


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"requests": 20, "single_turns": 6, "load_clients": [3, 6], "rounds": 1}
    return {"requests": 100, "single_turns": 30, "load_clients": [20, 40, 60], "rounds": 2}


def load_script(tokens: int) -> dict[str, Any]:
    return {
        "text": reply_text(tokens, seed="b"),
        "first_token_delay": FIRST_TOKEN_DELAY,
        "tokens_per_second": TOKENS_PER_SECOND,
        "tokens_per_chunk": 1,
    }


def per_turn_ms(seconds: dict[str, float], turns: int) -> dict[str, float]:
    return {name: round(1000 * value / max(1, turns), 2) for name, value in seconds.items()}


async def request_floor(stack: Stack, cookies: dict[str, str], count: int) -> dict[str, Any]:
    """Signed-in GETs of an empty partial, one at a time: round trip and web CPU each."""
    async with new_client(cookies, stack.web_url, connections=4) as client:
        for _ in range(10):  # warm up: connection, session cache, template
            (await client.get("/chat/models/")).raise_for_status()
        meter = CpuMeter(stack.pids())
        times = []
        for _ in range(count):
            start = time.monotonic()
            response = await client.get("/chat/models/")
            times.append(time.monotonic() - start)
            response.raise_for_status()
        cpu = meter.seconds()
    return {
        "round_trip_ms": summary_ms(times),
        "web_cpu_ms": round(1000 * cpu["web"] / count, 2),
        "client_cpu_ms": round(1000 * cpu["bench client"] / count, 2),
    }


async def single_turns(
    stack: Stack, cookies: dict[str, str], conversations: list[str]
) -> dict[str, float]:
    """Turns one after another (the first two warm up): CPU ms per turn of every process."""
    stack.fake_script(len(conversations), **SINGLE_SCRIPT)
    async with new_client(cookies, stack.web_url) as client:
        for conversation in conversations[:2]:
            await run_turn_httpx(client, conversation, "Hello", TURN_TIMEOUT)
        meter = CpuMeter(stack.pids())
        measured = conversations[2:]
        turns = [await run_turn_httpx(client, c, "Hello", TURN_TIMEOUT) for c in measured]
        cpu = meter.seconds()
    failed = [t for t in turns if not t.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} single turns failed: {failed[0].error}")
    return per_turn_ms(cpu, len(turns))


async def steady_load(
    stack: Stack,
    cookies: dict[str, str],
    conversations: list[str],
    tokens: int,
    rounds: int,
) -> dict[str, Any]:
    """`len(conversations)` clients, `rounds` turns each, starts spread over one reply; the
    same number of direct calls to the fake, run the same way just before. Busy cores of
    every process and the turn rate, for each."""
    clients = len(conversations)
    spread = tokens / TOKENS_PER_SECOND
    script = load_script(tokens)

    stack.fake_script(clients * rounds, **script)
    meter = CpuMeter(stack.pids())
    async with httpx.AsyncClient(
        base_url=stack.fake_url,
        trust_env=False,
        timeout=TURN_TIMEOUT,
        limits=httpx.Limits(max_connections=clients, max_keepalive_connections=clients),
    ) as fake:

        async def direct_client(_: int) -> list[Any]:
            return [await direct_call(fake, "Count", TURN_TIMEOUT) for _ in range(rounds)]

        direct = [c for group in await staggered(clients, spread, direct_client) for c in group]
    direct_busy = busy_cores(meter, sum(1 for d in direct if d.error is None))

    stack.fake_script(clients * rounds, **script)
    meter = CpuMeter(stack.pids())
    async with new_client(cookies, stack.web_url, connections=clients + 10) as client:

        async def relay_client(index: int) -> list[Any]:
            return [
                await run_turn_raw(
                    client, stack.web_port, cookies, conversations[index], "Count", TURN_TIMEOUT
                )
                for _ in range(rounds)
            ]

        turns = [t for group in await staggered(clients, spread, relay_client) for t in group]
    relay_busy = busy_cores(meter, sum(1 for t in turns if t.ok))
    failed = [t for t in turns if not t.ok] + [d for d in direct if d.error]
    return {
        "clients": clients,
        "tokens": tokens,
        "turns": len(turns),
        "failed": len(failed),
        "direct": direct_busy,
        "relay": relay_busy,
        "relay_max_gap_ms": ms(max((t.max_gap for t in turns if t.ok), default=None)),
        "relay_ttft_ms": summary_ms([t.ttft for t in turns if t.ttft is not None]),
        "direct_ttft_ms": summary_ms([d.ttft for d in direct if d.ttft is not None]),
    }


def busy_cores(meter: CpuMeter, turns: int) -> dict[str, Any]:
    """Completed turns per second and each process's busy cores since `meter` started, and
    what processes outside the benchmark used meanwhile (a shared machine skews both)."""
    wall = time.monotonic() - meter.start_wall
    used = meter.read()
    cores = {name: round(used[name] / 100, 3) for name in meter.pids}
    return {
        "turns_per_second": round(turns / wall, 2),
        "cores": cores,
        "other_cores": round(used["other"] / 100, 3),
    }


def extrapolate(loads: list[dict[str, Any]], rate: float) -> dict[str, float]:
    """Each process's busy cores at `rate` turns/s, on the least-squares line through the
    measured loads (a fixed cost per second plus a cost per turn)."""
    rates = [load["turns_per_second"] for load in loads]
    mean_rate = sum(rates) / len(rates)
    spread = sum((r - mean_rate) ** 2 for r in rates)
    found = {}
    for name in loads[0]["cores"]:
        cores = [load["cores"][name] for load in loads]
        mean_cores = sum(cores) / len(cores)
        slope = (
            sum((r - mean_rate) * (c - mean_cores) for r, c in zip(rates, cores, strict=True))
            / spread
            if spread
            else mean_cores / max(mean_rate, 1e-9)
        )
        found[name] = round(max(0.0, mean_cores + slope * (rate - mean_rate)), 2)
    return found


def main() -> None:
    args = parse_args(__doc__ or "")
    n = apply_overrides(sizes(args.quick), args)
    started = time.monotonic()
    cores = len(os.sched_getaffinity(0))
    levels = sorted(set(n["load_clients"]))
    if len(levels) < 2:
        raise SystemExit("--set load_clients needs two different sizes at least (a line)")
    # A thread per turn in flight and spare, as bench_ttft and bench_throughput give theirs.
    worker_threads = max(levels) + 28
    loads: dict[tuple[int, int], dict[str, Any]] = {}
    with Stack("budget", worker_concurrency=worker_threads, keep=args.keep) as stack:
        with phase("setup: user, key, conversations, sign-in"):
            user = stack.create_user(unique_email("budget"))
            key = stack.create_key(user)
            stack.wait_keys_checked([key])
            cookies = stack.login(user.email)
        with phase(f"request floor: {n['requests']} signed-in GETs"):
            floor = asyncio.run(request_floor(stack, cookies, n["requests"]))
            say(f"request floor: {floor}")
        with phase(f"{n['single_turns']} turns one at a time"):
            conversations = stack.create_conversations(user, key, n["single_turns"] + 2)
            single = asyncio.run(single_turns(stack, cookies, conversations))
            say(f"CPU ms per turn, one at a time: {single}")
        stack.check_alive()
        for _, _, tokens, _ in TARGET_LOADS:
            for clients in levels:
                with phase(f"steady load: {clients} clients, {tokens}-token replies"):
                    conversations = stack.create_conversations(user, key, clients)
                    load = asyncio.run(
                        steady_load(stack, cookies, conversations, tokens, n["rounds"])
                    )
                    loads[tokens, clients] = load
                    say(
                        f"{clients} clients: relayed {load['relay']}, direct {load['direct']}, "
                        f"max gap {load['relay_max_gap_ms']} ms, failed {load['failed']} "
                        "(left out of the turn rate)"
                    )
                stack.check_alive()

    figures: list[Figure] = [
        figure(
            "signed-in request round trip, p50",
            floor["round_trip_ms"]["p50"],
            "ms",
            note=(
                f"p95 {floor['round_trip_ms']['p95']} ms; web CPU {floor['web_cpu_ms']} ms per "
                "request; a floor under the 1-turn added TTFT (target p50 <= 5 ms)"
            ),
        ),
        figure(
            "CPU per turn, one at a time, all processes",
            round(sum(single.values()), 1),
            "ms",
            note=", ".join(f"{name} {value}" for name, value in single.items()),
        ),
    ]
    demands = {}
    for bench, concurrent, tokens, target in TARGET_LOADS:
        measured_loads = [loads[tokens, c] for c in levels]
        rate = concurrent / (FIRST_TOKEN_DELAY + tokens / TOKENS_PER_SECOND)
        top_rate = max(load["relay"]["turns_per_second"] for load in measured_loads)
        fake_alone = extrapolate([load["direct"] for load in measured_loads], rate)["fake"]
        relayed = extrapolate([load["relay"] for load in measured_loads], rate)
        total = round(sum(relayed.values()), 2)
        own = round(sum(relayed[name] for name in ("worker", "web", "redis")), 2)
        demands[bench] = {
            "concurrent": concurrent,
            "turns_per_second": round(rate, 1),
            "target": target,
            "fake_alone_cores": fake_alone,
            "relayed_cores": relayed,
            "relayed_cores_total": total,
            "relay_own_cores": own,
        }
        measured = "; ".join(
            f"{c} clients: {loads[tokens, c]['relay']['turns_per_second']} turns/s, "
            f"{round(sum(loads[tokens, c]['relay']['cores'].values()), 2)} cores busy, "
            f"max gap {loads[tokens, c]['relay_max_gap_ms']} ms, "
            f"other processes {loads[tokens, c]['relay']['other_cores']} cores"
            for c in levels
        )
        figures.append(
            figure(
                f"{bench}'s load ({concurrent} turns): the fake provider alone",
                fake_alone,
                "cores",
                note=f"{rate:.1f} turns/s of {tokens} tokens, straight to the fake",
            )
        )
        figures.append(
            figure(
                f"{bench}'s load ({concurrent} turns): the relay's own processes",
                own,
                "cores",
                note="worker, web and Redis, without the fake provider and the clients",
            )
        )
        figures.append(
            figure(
                f"{bench}'s load ({concurrent} turns): relayed, every process",
                total,
                "cores",
                at_most=float(cores),
                note=(
                    f"target: {target}; the fake provider and the benchmark's clients "
                    f"included, as the benchmark runs them on this machine; by process "
                    f"{relayed}; {rate / top_rate:.1f}x the highest measured rate; "
                    f"measured: {measured}"
                ),
            )
        )
    title = "bench_budget" + (" (QUICK: sizes reduced)" if args.quick else "")
    print_table(title, figures)
    write_results(
        "budget",
        {
            "quick": args.quick,
            "sizes": n,
            "cores": cores,
            "figures": [f.as_json() for f in figures],
            "request_floor": floor,
            "single_turn_cpu_ms": single,
            "loads": [load for load in loads.values()],
            "demand_at_targets": demands,
            "service_errors": stack.errors,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    say(f"done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    run(main)
