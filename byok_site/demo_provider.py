"""The local demo provider for `make run`: a first chat on a fresh machine with no internet.

An OpenAI-compatible server on 127.0.0.1:8765 that streams a short, clearly labelled demo
reply (it quotes what you wrote, line for line), or, for the model `byok-demo-slow`, a long
Markdown reply at a reading pace. It is the fake provider of the test suite with a friendlier
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

from providers.continuation import CONTINUE_INSTRUCTION
from tests.fakes.provider import FakeProvider, RecordedRequest, Script

DEMO_REPLY = (
    "**This is BYOK's local demo provider**, running on your machine — no model and no "
    "internet involved.\n\n"
    "You wrote:\n\n{quote}\n\n"
    "Your message went through the same path a real one takes: sealed in your vault, "
    "handed to a Celery worker, streamed back to you over Redis and Server-Sent Events.\n\n"
    "To talk to a real model, add an API key on the **Keys** page and start a new chat."
)
# The most of the user's message the reply quotes back.
QUOTE_LIMIT = 4000

# `byok-demo-slow` writes this at a reading pace, so Stop, a reload while it streams,
# Continue and the live Markdown can be tried without a model.
SLOW_MODEL = "byok-demo-slow"
SLOW_TOKENS_PER_SECOND = 15
SLOW_FIRST_TOKEN_DELAY = 0.5
SLOW_REPLY = """\
# A slow reply, for trying things out

This is the **slow demo model**: it writes about fifteen words a second, so there is time to \
press *Stop*, to reload the page while it writes, and to watch the Markdown take shape as it \
streams. Nothing here comes from a model; the text is the same every time.

## What to try while it writes

1. Press **Stop** part-way through: what arrived is kept, and the reply says it was stopped.
2. Press **Continue** on the stopped reply: the demo carries on, joined to the same reply.
3. Reload the page: the reply picks up where the stream is, without starting over.
4. Scroll up to read: the page stops following the newest text until you come back down.
5. Open a second tab on the same conversation: both follow the same stream.

Each of these goes through the same path as a real model: the vault seals the text, a \
Celery worker relays the stream, Redis holds the sealed deltas, and your browser reads them \
over Server-Sent Events.

## A table

| Step | Where it runs | What it holds |
| :--- | :---: | ---: |
| Send | web | your message, sealed |
| Relay | worker | the provider stream |
| Stream | Redis | sealed deltas, for a while |
| Show | browser | the rendered Markdown |

Tables are rendered as they complete; the alignment of each column comes from the row of \
dashes under the header.

## Some code

A fenced block is highlighted once it is complete, under a header that names its language \
and a button that copies it:

```python
def fibonacci(count: int) -> list[int]:
    \"\"\"The first `count` Fibonacci numbers.\"\"\"
    numbers = [0, 1]
    while len(numbers) < count:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:count]


print(fibonacci(10))
```

Inline code like `make run` stays in the line it belongs to.

## Some mathematics

Inline math such as $e^{i\\pi} + 1 = 0$ or $a^2 + b^2 = c^2$ sits inside a sentence, and a \
display formula gets a line of its own:

$$
\\int_{-\\infty}^{\\infty} e^{-x^2} \\, dx = \\sqrt{\\pi}
$$

The sum of the first $n$ odd numbers is always a square:

$$
\\sum_{k=1}^{n} (2k - 1) = n^2
$$

## A quote and a list of loose ends

> Every reply is sealed with your own data key before it is stored, and every delta is \
> sealed before it reaches Redis.

- The usage page counts this reply, at a price of zero: the demo costs nothing.
- The small print under the reply shows its tokens, its cost and how long the first token took.
- A stopped reply keeps its text, and its tokens are an estimate, marked with ≈.
- Regenerate writes a new version; the arrows beside it switch between versions.

## Why a slow model at all

Real models are fast on a good day and slow on a bad one. Trying the page at a reading pace \
shows what a user sees when a provider is busy: the spinner before the first token, the \
text arriving line by line, headings and lists settling as soon as they are complete, the \
table filling in row by row, and the code block switching to its highlighted form once its \
closing fence arrives. The final rendering is the same as the live one, so nothing jumps \
when the reply ends.

That is the end of the slow demo reply. Send another message for another one, or pick the \
`byok-demo` model for quick replies.
"""


def quote_markdown(text: str) -> str:
    """`text` as a Markdown block quote, line for line: every line after "> " (a blank line
    after ">"), so its line breaks, lists and fenced code stay what they were, inside the
    quote. At most QUOTE_LIMIT characters of it; "(nothing)" for an empty message."""
    text = text.strip("\n")[:QUOTE_LIMIT]
    if not text.strip():
        return "> (nothing)"
    return "\n".join(f"> {line}" if line.strip() else ">" for line in text.splitlines())


class DemoProvider(FakeProvider):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._recent: collections.deque[RecordedRequest] = collections.deque(maxlen=50)

    def _record(self, request: RecordedRequest) -> None:
        self._recent.append(request)  # keep memory flat: a dev server runs for days

    def script_for(self, request: RecordedRequest) -> Script:
        body: Any = request.body if isinstance(request.body, dict) else {}
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        slow = body.get("model") == SLOW_MODEL
        text = _reply(slow, messages)
        # Continue (chat.turns): the reply so far, then the request to carry on. The demo
        # writes the rest of the reply it was writing.
        if (
            len(messages) >= 2
            and messages[-1].get("role") == "user"
            and messages[-1].get("content") == CONTINUE_INSTRUCTION
            and messages[-2].get("role") == "assistant"
        ):
            partial = str(messages[-2].get("content", ""))
            whole = _reply(slow, messages[:-2])
            if partial and whole.startswith(partial):
                text = whole[len(partial) :] or " (That was all.)"
        if slow:
            return Script(
                text=text,
                first_token_delay=SLOW_FIRST_TOKEN_DELAY,
                tokens_per_second=SLOW_TOKENS_PER_SECOND,
            )
        return Script(text=text, first_token_delay=0.3, tokens_per_second=60, tokens_per_chunk=2)


def _reply(slow: bool, messages: list[dict[str, Any]]) -> str:
    """The demo's whole reply to a conversation: the slow model's long one, or the quote of
    the last user message."""
    if slow:
        return SLOW_REPLY
    said = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            said = str(message.get("content", ""))
            break
    return DEMO_REPLY.format(quote=quote_markdown(said))


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
