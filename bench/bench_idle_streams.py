"""Idle SSE streams held by one web process (uvicorn, one process).

Every stream follows its own turn that never progresses: the messages are sent (through the
chat service) with no Celery worker running, so they stay queued. A small raw-socket client
opens the streams in steps; after each step the benchmark reads the web process's resident
memory (VmRSS), its threads and open files, and the number of Redis client connections
(CLIENT LIST). At the end every stream is held for one SSE heartbeat period, and must still
be open.

Targets: >= 5,000 streams, <= 50 kB of web-process memory per stream, and Redis connections
per process, not per stream.

    .venv/bin/python bench/bench_idle_streams.py [--quick] [--set steps=1000,5000]
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from harness import (
    CpuMeter,
    Figure,
    RawSse,
    Stack,
    apply_overrides,
    figure,
    ms,
    open_fds,
    parse_args,
    pct,
    phase,
    print_table,
    rss_kb,
    run,
    say,
    unique_email,
    write_results,
)

TARGET_STREAMS = 5000
TARGET_KB = 50.0
TARGET_REDIS_ADDED = 50  # a pool per process, not a connection per stream
OPEN_CONCURRENCY = 64
OPEN_TIMEOUT = 60.0


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"steps": [100, 300], "users": 2, "settle": 2, "hold": 0}
    return {
        "steps": [1000, 2500, 5000],  # streams open, cumulative
        "users": 10,
        "settle": 3,  # seconds after a step before measuring
        "hold": -1,  # seconds to hold at the end; -1: one heartbeat period + 3 s
    }


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


class Holder:
    """Holds SSE connections open: each task opens one stream, waits for its first bytes
    (the `retry:` line), then reads and counts keep-alives until told to stop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened = 0
        self.failed: list[str] = []
        self.closed_early = 0
        self.keepalives = 0
        self.open_times: list[float] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stop = asyncio.Event()
        self.limit = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def open_many(self, targets: list[tuple[str, dict[str, str]]]) -> None:
        ready = [asyncio.get_running_loop().create_future() for _ in targets]
        for (path, cookies), future in zip(targets, ready, strict=True):
            self.tasks.append(asyncio.create_task(self._hold(path, cookies, future)))
        await asyncio.gather(*ready)

    async def _hold(self, path: str, cookies: dict[str, str], ready: asyncio.Future[None]) -> None:
        stream = RawSse(self.port, path, cookies)
        try:
            async with self.limit:
                started = time.monotonic()
                async with asyncio.timeout(OPEN_TIMEOUT):
                    await stream.open()
                    first = await stream.chunk()
                if not first or b"retry:" not in first:
                    raise RuntimeError(f"unexpected first bytes {first!r}")
                self.open_times.append(time.monotonic() - started)
                self.opened += 1
            ready.set_result(None)
            while not self.stop.is_set():
                chunk = await stream.chunk()
                if chunk is None:
                    self.closed_early += 1
                    return
                self.keepalives += chunk.count(b": keep-alive")
        except Exception as error:
            if not ready.done():
                self.failed.append(f"{type(error).__name__}: {error}"[:200])
                ready.set_result(None)
            elif not self.stop.is_set():
                self.closed_early += 1
        finally:
            stream.close()

    @property
    def alive(self) -> int:
        return self.opened - self.closed_early

    async def close_all(self) -> None:
        self.stop.set()
        for task in self.tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 30)


def snapshot(stack: Stack, holder: Holder) -> dict[str, Any]:
    web = stack.pid("web")
    return {
        "streams_open": holder.alive,
        "web_rss_kb": rss_kb(web),
        "web_threads": threads_of(web),
        "web_open_files": open_fds(web),
        "redis_connections": stack.redis_connections(),
    }


class Targets:
    """Queued turns to follow, made through the chat service (a conversation and a sent
    message each, round-robin over the users), in the benchmark's worker thread."""

    def __init__(self, stack: Stack, users: list[tuple[Any, Any, dict[str, str]]]) -> None:
        self.stack = stack
        self.users = users
        self.made = 0
        self.stop = threading.Event()  # set when the benchmark ends or is interrupted

    def make(self, count: int) -> list[tuple[str, dict[str, str]]]:
        from django.db import connection
        from django.urls import reverse

        from chat.services import conversation_create, message_send

        targets = []
        try:
            for _ in range(count):
                if self.stop.is_set():
                    break
                user, key, cookies = self.users[self.made % len(self.users)]
                conversation = conversation_create(owner=user, key=key, model="fake-gpt-large")
                _, reply = message_send(conversation=conversation, text="Wait for me")
                targets.append((reverse("chat:stream", args=[reply.pk]), cookies))
                self.made += 1
        finally:
            connection.close()
        return targets


async def measure(stack: Stack, maker: Targets, n: dict) -> dict:
    loop = asyncio.get_running_loop()
    holder = Holder(stack.web_port)
    heartbeat = float(stack.env.get("BYOK_SSE_HEARTBEAT_SECONDS", "15"))
    steps_wanted = list(n["steps"])
    # Setup of the next step's turns (bench process) overlaps the opening of this step's
    # streams (web process): the whole run stays within a few minutes.
    pending = loop.run_in_executor(None, maker.make, steps_wanted[0] + 5)
    targets = await pending
    # Warm the web process up (imports, pools, the hub) with a few streams, then close them.
    warm = Holder(stack.web_port)
    await warm.open_many(targets[:5])
    await warm.close_all()
    targets = targets[5:]
    await asyncio.sleep(n["settle"])
    base = snapshot(stack, holder)
    say(f"baseline: {base}")
    steps = []
    done = 0
    try:
        for index, count in enumerate(steps_wanted):
            following = steps_wanted[index + 1] - count if index + 1 < len(steps_wanted) else 0
            pending = loop.run_in_executor(None, maker.make, following)
            meter = CpuMeter({"web": stack.pid("web")})
            began = time.monotonic()
            await holder.open_many(targets)
            took = time.monotonic() - began
            opening_cpu = meter.read()["web"]
            opened_now = len(targets)
            done = count
            targets = await pending
            await asyncio.sleep(n["settle"])
            meter = CpuMeter({"web": stack.pid("web")})
            await asyncio.sleep(2)
            snap = snapshot(stack, holder)
            snap.update(
                {
                    "step": count,
                    "open_seconds": round(took, 1),
                    "opens_per_second": round(opened_now / took, 1) if took else None,
                    "open_ms_p50": ms(pct(holder.open_times[-opened_now:], 50)),
                    "open_ms_p95": ms(pct(holder.open_times[-opened_now:], 95)),
                    "web_cpu_percent_opening": opening_cpu,
                    "web_cpu_ms_per_open": round(opening_cpu * 10 * took / opened_now, 1)
                    if opened_now
                    else None,
                    "failed_opens": len(holder.failed),
                    "web_cpu_percent_idle": meter.read()["web"],
                    "kb_per_stream": round((snap["web_rss_kb"] - base["web_rss_kb"]) / count, 1),
                    "redis_added": snap["redis_connections"] - base["redis_connections"],
                }
            )
            snap["closed_early"] = holder.closed_early
            snap["all_open"] = holder.alive == count and not holder.failed
            steps.append(snap)
            say(f"step {count}: {snap}")
            stack.check_alive()
            if not snap["all_open"]:
                say(
                    f"stopping: {len(holder.failed)} streams failed to open "
                    f"{holder.failed[:2]}, {holder.closed_early} were closed by the server"
                )
                break
        hold = n["hold"] if n["hold"] >= 0 else heartbeat + 3
        held: dict[str, Any] = {}
        if hold and steps and steps[-1]["all_open"]:
            say(f"holding {holder.alive} streams for {hold:.0f}s (heartbeat every {heartbeat:g}s)")
            meter = CpuMeter({"web": stack.pid("web")})
            before = holder.keepalives
            await asyncio.sleep(hold)
            held = snapshot(stack, holder)
            held.update(
                {
                    "seconds": hold,
                    "keepalives_received": holder.keepalives - before,
                    "web_cpu_percent": meter.read()["web"],
                    "kb_per_stream": round((held["web_rss_kb"] - base["web_rss_kb"]) / done, 1)
                    if done
                    else None,
                    "redis_added": held["redis_connections"] - base["redis_connections"],
                    "all_open": holder.alive == done,
                }
            )
            say(f"after holding: {held}")
    finally:
        maker.stop.set()
        await holder.close_all()
    return {
        "baseline": base,
        "steps": steps,
        "held": held,
        "failed_opens": holder.failed[:5],
        "failed_count": len(holder.failed),
        "closed_early": holder.closed_early,
    }


def main() -> None:
    args = parse_args(__doc__ or "")
    n = apply_overrides(sizes(args.quick), args)
    started = time.monotonic()
    total = max(n["steps"])
    n["steps"] = sorted(n["steps"])
    # No worker: every turn stays queued, so its stream stays open and idle.
    with Stack("idle", worker_concurrency=None, keep=args.keep) as stack:
        with phase(f"setup: {n['users']} users"):
            users = []
            for index in range(n["users"]):
                user = stack.create_user(unique_email(f"idle{index}"))
                key = stack.create_key(user)
                users.append((user, key, stack.login(user.email)))
        with phase(f"open and hold up to {total} idle streams (turns made as it goes)"):
            result = asyncio.run(measure(stack, Targets(stack, users), n))

    # The figure is the largest step at which every stream opened and stayed open (through
    # the final heartbeat hold, for the last step).
    good = [step for step in result["steps"] if step["all_open"]]
    if result["held"] and not result["held"]["all_open"]:
        good = good[:-1]
    last = good[-1] if good else {}
    if last and result["held"] and last is result["steps"][-1]:
        last = {**last, **result["held"]}
    held_streams = last.get("streams_open", 0)
    trouble = [s for s in result["steps"] if not s["all_open"]]
    figures: list[Figure] = [
        figure(
            "idle streams held by one web process",
            float(held_streams),
            "streams",
            at_least=TARGET_STREAMS,
            note=(
                f"at step {trouble[0]['step']}: {result['failed_count']} failed to open, "
                f"{result['closed_early']} closed by the server (see web.log, --keep)"
                if trouble
                else "all open" + (" through one heartbeat" if result["held"] else "")
            ),
        ),
        figure(
            "web process memory per idle stream",
            float(last.get("kb_per_stream") or float("nan")),
            "kB",
            at_most=TARGET_KB,
            note=f"VmRSS {result['baseline']['web_rss_kb']:,} kB -> "
            f"{last.get('web_rss_kb', 0):,} kB; threads {result['baseline']['web_threads']} -> "
            f"{last.get('web_threads')}; open files {last.get('web_open_files')}",
        ),
        figure(
            "Redis connections added by the web process",
            float(last.get("redis_added", float("nan"))),
            "connections",
            at_most=TARGET_REDIS_ADDED,
            note=f"CLIENT LIST {result['baseline']['redis_connections']} -> "
            f"{last.get('redis_connections')} with {held_streams} streams",
        ),
        figure(
            "web CPU per stream opened",
            float(max((s["web_cpu_ms_per_open"] or 0) for s in result["steps"]))
            if result["steps"]
            else float("nan"),
            "ms",
            note="highest over the steps; per step: "
            + ", ".join(f"{s['step']}: {s['web_cpu_ms_per_open']}" for s in result["steps"]),
        ),
    ]
    if result["held"]:
        figures.append(
            figure(
                "web CPU while holding idle streams",
                float(result["held"]["web_cpu_percent"]),
                "% of a core",
                note=f"{result['held']['keepalives_received']} keep-alives received "
                f"in {result['held']['seconds']:.0f}s",
            )
        )
    title = "bench_idle_streams" + (
        " (QUICK: sizes reduced, targets not meaningful)" if args.quick else ""
    )
    print_table(title, figures)
    print(
        "steps\n     step  open  RSS kB  kB/stream  threads  files  redis conns  opens/s"
        "  open p95 ms"
    )
    for step in result["steps"]:
        print(
            f"  {step['step']:>7} {step['streams_open']:>5} {step['web_rss_kb']:>7} "
            f"{step['kb_per_stream']:>10} "
            f"{step['web_threads']:>8} {step['web_open_files']:>6} "
            f"{step['redis_connections']:>12} {step['opens_per_second']:>8} "
            f"{step['open_ms_p95']:>12}"
        )
    print(flush=True)
    write_results(
        "idle_streams",
        {
            "quick": args.quick,
            "sizes": n,
            "figures": [f.as_json() for f in figures],
            **result,
            "service_errors": stack.errors,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    say(f"done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    run(main)
