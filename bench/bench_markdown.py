"""The CPU cost of live Markdown: a 4,000-token reply rendered as it streams.

No stack: this times `chat.rendering` alone, in this process, on a reply of ~4,000 tokens of
mixed Markdown (headings, paragraphs, lists, a table, fenced code, math), fed the way the SSE
view feeds it: a few tokens per batch. It prints, per token of the reply:

- live: `LiveMarkdown.feed` for every batch (complete blocks rendered once, the growing
  block again each batch) — the web's cost per token while a reply streams;
- live, throttled: the same, but batches arriving back to back (the tail's rendering put off
  while it would cost more than a tenth of the time since the last one);
- naive: the whole reply so far rendered again each batch (what a simple live render does);
- final: the one render of the whole reply when it ends (paid either way).

    .venv/bin/python bench/bench_markdown.py [--set tokens_per_batch=3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "byok_site.settings_test")

import django

django.setup()

from chat.rendering import LiveMarkdown, render_markdown  # noqa: E402

SECTION = """## Part {n}

Here is **bold**, *emphasis* and `inline code`, with math $e^{{i\\pi}}+1=0$ in a sentence
that goes on for a while so that the paragraph has the length of a real one, as models write.

1. First step, with a [link](https://example.com)
2. Second step with *emphasis*

   and a continued paragraph inside the item

3. Third step

| name | cost | share |
|:-----|-----:|:-----:|
| tea | 3.20 | 10 % |
| coffee | 22.00 | 90 % |

```python
def total(items):
    return sum(item.cost for item in items if item.cost > 0)
```

> A quoted remark
> over two lines.

$$
\\sum_{{i=1}}^n i = \\frac{{n(n+1)}}{{2}}
$$

"""
CHARS_PER_TOKEN = 4


def reply(tokens: int) -> str:
    text, n = "", 1
    while len(text) < tokens * CHARS_PER_TOKEN:
        text += SECTION.format(n=n)
        n += 1
    return text


def cpu(run) -> float:
    start = time.process_time()
    run()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    sizes = {"tokens": 4000, "tokens_per_batch": 3}
    for item in args.set:
        name, _, value = item.partition("=")
        sizes[name] = int(value)
    text = reply(sizes["tokens"])
    step = sizes["tokens_per_batch"] * CHARS_PER_TOKEN
    pieces = [text[at : at + step] for at in range(0, len(text), step)]
    tokens = len(text) / CHARS_PER_TOKEN

    def live(force: bool):
        def run() -> None:
            markdown = LiveMarkdown()
            for piece in pieces:
                markdown.feed(piece, force=force)
            committed, tail = markdown.snapshot()
            assert committed and tail is not None

        return run

    def naive() -> None:
        for end in range(1, len(pieces) + 1):
            render_markdown("".join(pieces[:end]))

    def final() -> None:
        render_markdown(text)

    rows = [
        ("live (every batch)", cpu(live(True))),
        ("live, throttled (back to back)", cpu(live(False))),
        ("final render, once", cpu(final)),
    ]
    if len(pieces) <= 2000:
        rows.append(("naive (all again each batch)", cpu(naive)))
    print(f"reply: {len(text):,} characters, ~{tokens:,.0f} tokens, {len(pieces):,} batches")
    print(f"{'':34} {'total ms':>10} {'µs/token':>10}")
    for name, seconds in rows:
        print(f"{name:34} {seconds * 1000:10.0f} {seconds * 1e6 / tokens:10.1f}")


if __name__ == "__main__":
    main()
