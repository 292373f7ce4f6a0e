"""What survives what: a worker killed mid-reply, Stop on its turn, a queued task the broker
lost — with the default lease, checkpoint and reaper settings, on a whole stack (web,
worker, beat, Redis, the timed fake).

For each, how long until the turn is ended (or answered), and how much of the text the user
had seen is kept. The database outage is covered by tests/test_chat_durable.py (it needs a
proxy in front of PostgreSQL).

    .venv/bin/python bench/bench_reliability.py [--quick]
"""

from __future__ import annotations

import signal
import time
from typing import Any

from harness import (
    PYTHON,
    Figure,
    Stack,
    apply_overrides,
    figure,
    parse_args,
    print_table,
    reply_text,
    run,
    say,
    unique_email,
    write_results,
)


def sizes(quick: bool) -> dict[str, Any]:
    return {
        "reply_tokens": 400,  # 8 s at 50 tokens/s: the worker dies in the middle
        "kill_after_tokens": 80 if quick else 150,
        "lost_task": 0 if quick else 1,  # the lost-task case waits half the queued timeout
    }


def spawn_worker(stack: Stack, name: str) -> None:
    stack.spawn(
        name,
        [
            PYTHON, "-m", "celery", "-A", "byok_site", "worker", "--pool", "threads",
            "--concurrency", "4", "--queues", "default,turns", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--hostname", f"{name}@localhost",
        ],
    )  # fmt: skip


def heartbeat_seen(stack: Stack, name: str) -> bool:
    """The worker has written its first heartbeat."""
    return stack.redis_client().zscore("byok:workers", f"{name}@localhost") is not None


def wait(condition: Any, what: str, timeout: float) -> float:
    """Seconds until `condition()` holds (polled every 50 ms); fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what}: not after {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def main() -> None:
    args = parse_args(__doc__ or "")
    size = apply_overrides(sizes(args.quick), args)
    figures: list[Figure] = []
    with Stack("reliability", keep=args.keep) as stack:
        from django.conf import settings

        from chat import services, streams
        from chat.models import PURPOSE_MESSAGE, Conversation, Message
        from completion import engine
        from vault.services import OwnerCipher

        stack.spawn(
            "beat",
            [PYTHON, "-m", "celery", "-A", "byok_site", "beat", "--loglevel", "WARNING",
             "--schedule", str(stack.tmp / "beat-schedule")],
        )  # fmt: skip
        user = stack.create_user(unique_email("reliability"))
        key = stack.create_key(user)
        stack.wait_keys_checked([key])
        cipher = OwnerCipher(user)

        def streamed(reply: Message) -> str:
            return streams.streamed_text(cipher, reply.pk)

        def kept(reply: Message) -> str:
            reply.refresh_from_db()
            return cipher.open(PURPOSE_MESSAGE, reply.pk, reply.sealed_content)

        def final(reply: Message) -> bool:
            reply.refresh_from_db()
            return reply.is_final

        def kill_holder(reply: Message) -> str:
            """SIGKILL the worker holding the turn's lease; the others reap."""
            holder = stack.redis_client().get(engine.lease_key(reply.pk)) or ""
            pid = int(holder.rpartition(":")[2])
            (name,) = [n for n, s in stack.services.items() if s.pid == pid]
            stack.services[name].process.send_signal(signal.SIGKILL)
            stack.services[name].process.wait(timeout=30)
            return name

        def start_turn() -> Message:
            stack.fake_script(1, text=reply_text(size["reply_tokens"]), tokens_per_second=50)
            (conversation,) = stack.create_conversations(user, key, 1)
            _, reply = services.message_send(
                conversation=Conversation.objects.get(pk=conversation),
                text="Tell me a long story.",
            )
            words = size["kill_after_tokens"]
            wait(lambda: len(streamed(reply).split()) >= words, "the reply to stream", 60)
            return reply

        # 1. A worker killed mid-reply: another worker's reaper ends the turn with the text
        # shown (with a single worker, its restart does).
        spawn_worker(stack, "worker-2")
        wait(lambda: heartbeat_seen(stack, "worker-2"), "worker-2 to start", 60)
        reply = start_turn()
        kill_holder(reply)
        shown = streamed(reply)
        ended = wait(lambda: final(reply), "the reaper to end the killed turn", 120)
        text = kept(reply)
        say(
            f"killed worker: ended {ended:.1f} s after SIGKILL as {reply.status}/{reply.error_kind}"
        )
        figures += [
            figure("SIGKILL mid-reply: turn ended after", ended, "s", at_most=30.0),
            figure("SIGKILL mid-reply: characters shown", len(shown), "chars"),
            figure("SIGKILL mid-reply: characters kept", len(text), "chars", at_least=len(shown)),
        ]  # fmt: skip

        # 2. Stop on a turn whose worker died: ended at once, as stopped, with its text.
        spawn_worker(stack, "worker-3")
        wait(lambda: heartbeat_seen(stack, "worker-3"), "worker-3 to start", 60)
        reply = start_turn()
        kill_holder(reply)
        shown = streamed(reply)
        lease = wait(lambda: not engine.lease_held(reply.pk), "the lease to expire", 60)
        started = time.monotonic()
        services.turn_cancel(message=reply)
        stop_ms = (time.monotonic() - started) * 1000
        reply.refresh_from_db()
        say(f"stop on a lost turn: {reply.status} in {stop_ms:.0f} ms ({lease:.1f} s lease)")
        figures += [
            figure("Stop on a lost turn: lease expired after", lease, "s",
                   at_most=float(settings.BYOK_TURN_LEASE_SECONDS)),
            figure("Stop on a lost turn: ended in", stop_ms, "ms", at_most=1000.0),
            figure("Stop on a lost turn: characters kept", len(kept(reply)), "chars",
                   at_least=len(shown)),
        ]  # fmt: skip

        # 3. A queued task the broker lost (Redis restarted without persistence while no
        # worker ran): queued once more by the reaper and answered.
        if size["lost_task"]:
            for name, service in stack.services.items():
                if name.startswith("worker") and service.alive():
                    service.process.send_signal(signal.SIGTERM)
                    service.process.wait(timeout=30)
            stack.fake_script(1, text=reply_text(20), tokens_per_second=200)
            (conversation,) = stack.create_conversations(user, key, 1)
            _, reply = services.message_send(
                conversation=Conversation.objects.get(pk=conversation), text="Hello?"
            )
            broker = stack.redis_client()
            for queue in broker.scan_iter("turns*"):  # the Celery queue (and its priorities)
                broker.delete(queue)
            spawn_worker(stack, "worker-4")
            answered = wait(lambda: final(reply), "the lost task to be answered", 240)
            say(f"lost task: {reply.status} {answered:.1f} s after the worker started")
            figures.append(
                figure(
                    "Lost queued task: answered after", answered, "s",
                    at_most=settings.BYOK_QUEUED_TURN_TIMEOUT / 2 + 10,
                )
            )  # fmt: skip
    print_table("What survives what (default lease 10 s, checkpoints 2 s, reaper 10 s)", figures)
    write_results(
        "reliability",
        {"quick": args.quick, "sizes": size, "figures": [f.as_json() for f in figures]},
    )


if __name__ == "__main__":
    run(main)
