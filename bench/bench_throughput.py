"""Throughput of the relay: one fast turn, and how many turns one worker process carries.

1. One turn at 1,000 tokens/s (2,000 tokens): every token must arrive (the deltas put
   together equal the script's text) and the `done` event must follow the provider's last
   token within 100 ms (final lag, from the timed fake's own timestamp).
2. Concurrent turns at 50 tokens/s (5 s replies) in ONE worker process, ramped: a step
   passes when every turn completes with all its text and no client saw a gap over 200 ms
   between two events. The figure is the highest passing step.

    .venv/bin/python bench/bench_throughput.py [--quick] [--set steps=10,25,50]
"""

from __future__ import annotations

import asyncio
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
    run_turn_raw,
    say,
    staggered,
    summary_ms,
    unique_email,
    write_results,
)

TARGET_LAG_MS = 100.0
TARGET_GAP_MS = 200.0
TARGET_TURNS = 200
TURN_TIMEOUT = 90.0


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "fast_tokens": 500,
            "fast_turns": 2,
            "steps": [5, 10],
            "step_tokens": 100,
            "rounds": 2,
            "stop_after_failures": 2,
        }
    return {
        "fast_tokens": 2000,  # at 1,000 tokens/s
        "fast_turns": 3,
        "steps": [10, 25, 50, 100, 200, 300],  # concurrent turns in one worker process
        "step_tokens": 250,  # 5 s at 50 tokens/s
        "rounds": 2,  # turns per client, back to back: a plateau at the step's count
        "stop_after_failures": 2,  # the ramp stops after this many failing steps in a row
    }


def fast_script(tokens: int) -> dict[str, Any]:
    return {
        "text": reply_text(tokens, seed="t"),
        "first_token_delay": 0.05,
        "tokens_per_second": 1000,
        "tokens_per_chunk": 1,
    }


def step_script(tokens: int) -> dict[str, Any]:
    return {
        "text": reply_text(tokens, seed="s"),
        "first_token_delay": 0.2,
        "tokens_per_second": 50,
        "tokens_per_chunk": 1,
    }


# --- 1. one turn at 1,000 tokens/s ----------------------------------------------------------


async def fast_turns(
    stack: Stack, cookies: dict[str, str], conversations: list[str], n: dict
) -> tuple[list[DirectCall], list[Turn], dict[str, float]]:
    script = fast_script(n["fast_tokens"])
    count = n["fast_turns"]
    async with httpx.AsyncClient(base_url=stack.fake_url, trust_env=False, timeout=60) as fake:
        stack.fake_script(count, **script)
        direct = [await direct_call(fake, "Go", 60, keep_text=True) for _ in range(count)]
        attach_timings(stack, direct)
    stack.fake_script(count + 1, **script)
    async with new_client(cookies, stack.web_url) as client:
        await run_turn_httpx(client, conversations[0], "Warm up", TURN_TIMEOUT)
        turns = []
        meter = CpuMeter(stack.pids())
        for conversation in conversations[1 : count + 1]:
            turns.append(await run_turn_httpx(client, conversation, "Go", TURN_TIMEOUT))
            await asyncio.sleep(0.2)
        cpu = meter.seconds()
    attach_timings(stack, turns)
    tokens = count * n["fast_tokens"]
    cpu_per_token = {name: round(1e6 * sec / tokens, 1) for name, sec in cpu.items()}
    return direct, turns, cpu_per_token


def fast_report(direct: list[DirectCall], turns: list[Turn], n: dict) -> dict[str, Any]:
    expected = fast_script(n["fast_tokens"])["text"]
    intact = [t for t in turns if t.ok and t.text == expected]
    lags = [t.t_done - t.fake["last"] for t in turns if t.ok and t.t_done and t.fake.get("last")]
    spans = [d.t_last - d.t_first for d in direct if d.t_first and d.t_last and d.error is None]
    direct_span = sorted(spans)[len(spans) // 2] if spans else float("nan")
    approx = [
        (t.t_done - t.t_first) - direct_span for t in turns if t.ok and t.t_done and t.t_first
    ]
    rates = [
        n["fast_tokens"] / (t.fake["last"] - t.fake["first"])
        for t in turns
        if t.fake.get("last") and t.fake.get("first") and t.fake["last"] > t.fake["first"]
    ]
    return {
        "turns": len(turns),
        "intact": len(intact),
        "direct_intact": sum(1 for d in direct if d.text == expected),
        "final_lag_ms": summary_ms(lags),
        "final_lag_vs_direct_ms": summary_ms(approx),
        "direct_stream_ms": ms(direct_span),
        "provider_tokens_per_second": [round(r) for r in rates],
        "events_per_turn": [t.events for t in turns],
        "max_gap_ms": [ms(t.max_gap) for t in turns],
        "ttft_ms": [ms(t.ttft) for t in turns],
        "errors": [t.error for t in turns if t.error],
    }


# --- 2. turns per worker process --------------------------------------------------------------


async def step_turns(
    stack: Stack, cookies: dict[str, str], conversations: list[str], n: dict
) -> list[Turn]:
    count, rounds = len(conversations), n["rounds"]
    spread = n["step_tokens"] / 50  # one reply's length

    async def client_turns(client: httpx.AsyncClient, conversation: str) -> list[Turn]:
        return [
            await run_turn_raw(client, stack.web_port, cookies, conversation, "Count", TURN_TIMEOUT)
            for _ in range(rounds)
        ]

    async with new_client(cookies, stack.web_url, connections=count + 10) as client:
        nested = await staggered(count, spread, lambda i: client_turns(client, conversations[i]))
    return [turn for group in nested for turn in group]


def step_report(turns: list[Turn], n: dict, cpu: dict[str, float], cpu_s: dict) -> dict:
    expected = step_script(n["step_tokens"])["text"]
    done = [t for t in turns if t.ok]
    intact = [t for t in done if t.text == expected]
    spans = [(t.t_start, t.t_done or t.t_start) for t in turns]
    flight = sorted(sum(1 for a, b in spans if a <= start <= b) for start, _ in spans)
    gaps = [t.max_gap for t in done]
    events = sum(t.events for t in turns)
    tokens = len(intact) * n["step_tokens"]
    max_gap = max(gaps) if gaps else float("nan")
    ok = len(intact) == len(turns) and bool(gaps) and max_gap * 1000 <= TARGET_GAP_MS
    return {
        "turns": len(turns),
        "completed_intact": len(intact),
        "pass": ok,
        "in_flight_median": flight[len(flight) // 2] if flight else 0,
        "max_gap_ms": ms(max_gap),
        "p99_turn_max_gap_ms": ms(pct(gaps, 99)),
        "turns_with_gap_over_200ms": sum(1 for g in gaps if g > TARGET_GAP_MS / 1000),
        # Where a gap came from: the provider's own pause (the fake, a Python process on the
        # same cores), between two XADDs (worker side), or after the XADD (Redis, web, client).
        "max_provider_gap_ms": ms(
            max((t.fake.get("max_gap") or 0.0 for t in done), default=float("nan"))
        ),
        "max_xadd_gap_ms": ms(max((t.max_xadd_gap for t in done), default=float("nan"))),
        "max_delivery_ms": ms(max((t.max_delivery for t in done), default=float("nan"))),
        # The last gap of a turn, before `done`, is the worker storing the outcome (SQLite
        # writes, usage, rendering) rather than streaming.
        "max_done_gap_ms": ms(max((t.done_gap for t in done), default=float("nan"))),
        "max_gap_between_deltas_ms": ms(
            max((t.max_stream_gap for t in done), default=float("nan"))
        ),
        "ttft_ms": summary_ms([t.ttft for t in done if t.ttft is not None]),
        "events": events,
        "tokens_per_event": round(tokens / events, 2) if events else None,
        "cpu_percent_of_one_core": cpu,
        "cpu_us_per_token": {
            name: round(1e6 * seconds / tokens) if tokens else None
            for name, seconds in cpu_s.items()
            if name in ("worker", "web", "fake", "redis")
        },
        "errors": sorted({t.error or "" for t in turns if t.error})[:3],
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    n = apply_overrides(sizes(args.quick), args)
    started = time.monotonic()
    steps: list[int] = list(n["steps"])
    worker_threads = max(steps) + 20
    results: dict[int, dict[str, Any]] = {}
    with Stack("throughput", worker_concurrency=worker_threads, keep=args.keep) as stack:
        with phase("setup: user, key, conversations, sign-in"):
            user = stack.create_user(unique_email("tput"))
            key = stack.create_key(user)
            stack.wait_keys_checked([key])
            conversations = stack.create_conversations(user, key, n["fast_turns"] + 1)
            cookies = stack.login(user.email)
        with phase(f"one turn at 1,000 tokens/s ({n['fast_tokens']} tokens) x{n['fast_turns']}"):
            direct, turns, cpu = asyncio.run(fast_turns(stack, cookies, conversations, n))
            fast = fast_report(direct, turns, n)
            fast["cpu_us_per_token"] = cpu
            say(f"CPU us per token at 1,000 tokens/s: {cpu}")
        stack.check_alive()
        failures = 0
        for count in steps:
            if failures >= n["stop_after_failures"]:
                say(f"step {count}: not run ({failures} failing steps in a row)")
                continue
            conversations = stack.create_conversations(user, key, count)
            stack.fake_script(count * n["rounds"], **step_script(n["step_tokens"]))
            with phase(f"step: {count} concurrent turns at 50 tokens/s"):
                meter = CpuMeter(stack.pids())
                turns = asyncio.run(step_turns(stack, cookies, conversations, n))
                cpu, cpu_s = meter.read(), meter.seconds()
                attach_timings(stack, turns)
                report = step_report(turns, n, cpu, cpu_s)
            results[count] = report
            say(
                f"step {count}: {'PASS' if report['pass'] else 'FAIL'} "
                f"intact {report['completed_intact']}/{report['turns']}, "
                f"max gap {report['max_gap_ms']} ms (provider "
                f"{report['max_provider_gap_ms']}, XADD gap {report['max_xadd_gap_ms']}, "
                f"between deltas {report['max_gap_between_deltas_ms']}, "
                f"last delta -> done {report['max_done_gap_ms']}, "
                f"delivery {report['max_delivery_ms']}), TTFT p95 {report['ttft_ms']['p95']} ms"
            )
            failures = 0 if report["pass"] else failures + 1
            left = stack.wait_turns_settled(timeout=60)
            if left:
                say(f"step {count}: {left} turns still unfinished after 60 s")
            stack.check_alive()

    passing = [count for count, r in results.items() if r["pass"]]
    best = float(max(passing)) if passing else 0.0
    figures: list[Figure] = [
        figure(
            "1,000 tok/s turn: tokens intact",
            float(fast["intact"]),
            f"of {fast['turns']} turns",
            at_least=fast["turns"],
            note=f"provider sent {fast['provider_tokens_per_second']} tokens/s; "
            f"delta events per turn {fast['events_per_turn']}",
        ),
        figure(
            "1,000 tok/s turn: final lag, max",
            fast["final_lag_ms"]["max"],
            "ms",
            at_most=TARGET_LAG_MS,
            note=f"done event - provider's last token; p50 {fast['final_lag_ms']['p50']} ms; "
            f"vs direct-call span: max {fast['final_lag_vs_direct_ms']['max']} ms",
        ),
        figure(
            "turns per worker process at 50 tok/s",
            best,
            "turns",
            at_least=TARGET_TURNS,
            note="highest step with every turn intact and max gap <= 200 ms; steps: "
            + ", ".join(
                f"{c}={'pass' if r['pass'] else 'FAIL'} (gap {r['max_gap_ms']} ms)"
                for c, r in results.items()
            ),
        ),
    ]
    title = "bench_throughput" + (
        " (QUICK: sizes reduced, targets not meaningful)" if args.quick else ""
    )
    print_table(title, figures)
    columns = [
        ("turns", 5),
        ("pass", 4),
        ("intact", 9),
        ("in flight", 9),
        ("max gap", 8),
        ("deltas", 7),
        ("->done", 7),
        ("prov gap", 8),
        ("XADD gap", 8),
        ("delivery", 8),
        ("TTFT p95", 8),
        ("worker%", 7),
        ("web%", 5),
        ("other%", 6),
        ("wk us/tok", 9),
        ("web us/tok", 10),
    ]
    print("ramp (gaps, TTFT in ms; CPU in % of one core and in us per token delivered)")
    print("  " + " ".join(name.rjust(width) for name, width in columns))
    for count, r in results.items():
        cpu, per = r["cpu_percent_of_one_core"], r["cpu_us_per_token"]
        cells = [
            count,
            "yes" if r["pass"] else "no",
            f"{r['completed_intact']}/{r['turns']}",
            r["in_flight_median"],
            f"{r['max_gap_ms']:.0f}",
            f"{r['max_gap_between_deltas_ms']:.0f}",
            f"{r['max_done_gap_ms']:.0f}",
            f"{r['max_provider_gap_ms']:.0f}",
            f"{r['max_xadd_gap_ms']:.0f}",
            f"{r['max_delivery_ms']:.0f}",
            f"{r['ttft_ms']['p95']:.0f}",
            f"{cpu.get('worker', 0):.0f}",
            f"{cpu.get('web', 0):.0f}",
            f"{cpu.get('other', 0):.0f}",
            per.get("worker") or 0,
            per.get("web") or 0,
        ]
        print(
            "  "
            + " ".join(
                str(cell).rjust(width) for cell, (_, width) in zip(cells, columns, strict=True)
            )
        )
    print(flush=True)
    write_results(
        "throughput",
        {
            "quick": args.quick,
            "sizes": n,
            "worker_concurrency": worker_threads,
            "figures": [f.as_json() for f in figures],
            "fast_turn": fast,
            "ramp": {str(count): r for count, r in results.items()},
            "service_errors": stack.errors,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    say(f"done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    run(main)
