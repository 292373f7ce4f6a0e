"""The fake provider (tests/fakes/provider.py), run as a subprocess with timestamps.

    python bench/timed_fake.py --port 8765

It is the unchanged fake, plus two things a benchmark needs:

- For every streamed reply it records, in CLOCK_MONOTONIC seconds (the same clock as
  `time.monotonic()` in every process on the machine), when the request arrived, when the
  first and the last chunk holding reply text were written to the socket, and the longest
  pause between two such chunks (the fake's own stalls, apart from the relay's). The reply is found
  by the last `bench-<16 hex>` nonce in the request body (the newest user message).
  `GET /__bench__/timings` returns them; `POST /__bench__/clear` forgets them.
- A listen backlog of 1,024 instead of socketserver's 5, so a burst of new connections from
  the worker is not met with dropped SYNs and one-second retransmits (an artefact of the
  fake, not of the app).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes import provider as fake_provider  # noqa: E402

NONCE = re.compile(r"bench-[0-9a-f]{16}")
CONTENT = re.compile(rb'"content": "[^"]')
MAX_RECORDS = 200_000

_timings: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()


class TimedHandler(fake_provider._Handler):
    bench_nonce: str | None = None
    bench_arrived: float = 0.0
    bench_first: float | None = None
    bench_last: float | None = None
    bench_chunks: int = 0
    bench_max_gap: float = 0.0

    def _dispatch(self) -> None:
        if self.path.startswith("/__bench__/"):
            self._bench_control()
            return
        self.bench_arrived = time.monotonic()
        super()._dispatch()

    def _bench_control(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/__bench__/timings") and self.command == "GET":
            with _lock:
                payload = json.dumps(_timings).encode()
            self._send_json(200, payload)
        elif self.path.startswith("/__bench__/clear") and self.command == "POST":
            with _lock:
                _timings.clear()
            self._send_json(200, {"cleared": True})
        else:
            self._send_json(404, {"error": "unknown bench control request"})

    def _stream_reply(
        self,
        protocol: str,
        request: fake_provider.RecordedRequest,
        script: fake_provider.Script,
        model: str,
    ) -> None:
        found = NONCE.findall(request.raw_body)
        self.bench_nonce = found[-1] if found else None
        self.bench_first = self.bench_last = None
        self.bench_chunks = 0
        self.bench_max_gap = 0.0
        try:
            super()._stream_reply(protocol, request, script, model)
        finally:
            self._bench_record(complete=True)

    def _write_chunk(self, data: bytes) -> None:
        super()._write_chunk(data)
        if self.bench_nonce is not None and CONTENT.search(data):
            now = time.monotonic()
            if self.bench_first is None:
                self.bench_first = now
                self._bench_record(complete=False)
            elif self.bench_last is not None:
                self.bench_max_gap = max(self.bench_max_gap, now - self.bench_last)
            self.bench_last = now
            self.bench_chunks += 1

    def _bench_record(self, *, complete: bool) -> None:
        if self.bench_nonce is None:
            return
        with _lock:
            if len(_timings) < MAX_RECORDS:
                _timings[self.bench_nonce] = {
                    "arrived": self.bench_arrived,
                    "first": self.bench_first,
                    "last": self.bench_last,
                    "chunks": self.bench_chunks,
                    "max_gap": self.bench_max_gap,
                    "complete": complete,
                }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The fake provider, with timestamps.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    fake_provider._Server.request_queue_size = 1024
    fake = fake_provider.FakeProvider(args.host, args.port)
    fake._server.RequestHandlerClass = TimedHandler
    fake.start()
    print(f"timed fake provider listening on {fake.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
