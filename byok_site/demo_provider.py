"""The local demo provider for `make run`: a first chat on a fresh machine with no internet.

An OpenAI-compatible server on 127.0.0.1:8765 that streams a short, clearly labelled demo
reply (it echoes what you wrote). It is the fake provider of the test suite with a friendlier
script; turns to it go through exactly the same vault, worker, stream and usage path as a
real provider. Development only: the "Demo" preset is offered only when BYOK_DEMO_PROVIDER is
on, which `make run` sets.

    python -m byok_site.demo_provider --port 8765
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

from tests.fakes.provider import FakeProvider, RecordedRequest, Script

DEMO_REPLY = (
    "**This is BYOK's local demo provider**, running on your machine — no model and no "
    "internet involved.\n\n"
    "You wrote:\n\n> {quote}\n\n"
    "Your message went through the same path a real one takes: sealed in your vault, "
    "handed to a Celery worker, streamed back to you over Redis and Server-Sent Events.\n\n"
    "To talk to a real model, add an API key on the **Keys** page and start a new chat."
)


class DemoProvider(FakeProvider):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._recent: collections.deque[RecordedRequest] = collections.deque(maxlen=50)

    def _record(self, request: RecordedRequest) -> None:
        self._recent.append(request)  # keep memory flat: a dev server runs for days

    def script_for(self, request: RecordedRequest) -> Script:
        body: Any = request.body if isinstance(request.body, dict) else {}
        said = ""
        for message in reversed(body.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                said = str(message.get("content", ""))
                break
        quote = " ".join(said.split())[:300] or "(nothing)"
        return Script(
            text=DEMO_REPLY.format(quote=quote),
            first_token_delay=0.3,
            tokens_per_second=60,
            tokens_per_chunk=2,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run BYOK's local demo provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    demo = DemoProvider(args.host, args.port).start()
    print(f"demo provider (OpenAI-compatible) at {demo.url}/v1", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        demo.stop()


if __name__ == "__main__":
    main()
