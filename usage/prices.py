"""Prices: the shipped list (prices.json) and the operator's overrides (ModelPrice rows)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from usage.models import ModelPrice

PRICES_FILE = Path(__file__).with_name("prices.json")
MICRO = 1_000_000


@dataclass(frozen=True)
class Price:
    """Micro-dollars per million tokens. `cache_read`/`cache_write` None: billed as input."""

    input: int
    output: int
    cache_read: int | None = None
    cache_write: int | None = None


@dataclass(frozen=True)
class TokenCounts:
    input: int
    output: int
    cached: int = 0
    cache_write: int = 0


def _micro(dollars: float | str) -> int:
    return int(Decimal(str(dollars)) * MICRO)


def shipped_prices() -> list[dict[str, Any]]:
    return list(json.loads(PRICES_FILE.read_text())["prices"])


def load_shipped_prices() -> tuple[int, int]:
    """Create or refresh the shipped prices; operator overrides are left alone."""
    created = updated = 0
    for entry in shipped_prices():
        values = {
            "input_per_mtok": _micro(entry["input"]),
            "output_per_mtok": _micro(entry["output"]),
            "cache_read_per_mtok": _micro(entry["cache_read"]) if "cache_read" in entry else None,
            "cache_write_per_mtok": _micro(entry["cache_write"])
            if "cache_write" in entry
            else None,
        }
        row = ModelPrice.objects.filter(preset=entry["preset"], model=entry["model"]).first()
        if row is None:
            ModelPrice.objects.create(preset=entry["preset"], model=entry["model"], **values)
            created += 1
        elif not row.overridden:
            ModelPrice.objects.filter(pk=row.pk).update(**values)
            updated += 1
    return created, updated


def price_for(preset: str, model: str) -> Price | None:
    """The current price of a model, or None when unknown."""
    row = ModelPrice.objects.filter(preset=preset, model=model).first()
    if row is None:
        return None
    return Price(
        input=row.input_per_mtok,
        output=row.output_per_mtok,
        cache_read=row.cache_read_per_mtok,
        cache_write=row.cache_write_per_mtok,
    )


def cost_micro(price: Price, tokens: TokenCounts) -> int:
    """The exact cost in micro-dollars, rounded half up once at the end.

    `tokens.input` includes cached and cache-write tokens (as providers report them); those
    parts are billed at their own rates when the price has them, else as plain input.
    """
    cached = tokens.cached if price.cache_read is not None else 0
    written = tokens.cache_write if price.cache_write is not None else 0
    plain_input = max(0, tokens.input - cached - written)
    total = (
        plain_input * price.input
        + cached * (price.cache_read or 0)
        + written * (price.cache_write or 0)
        + tokens.output * price.output
    )
    return (total + MICRO // 2) // MICRO


# A proven upper bound on a prompt's tokens: every tokenizer in use (byte-level BPE for
# OpenAI and Anthropic, SentencePiece with byte fallback for Gemini, and the open models
# served by OpenAI-compatible servers) spends at least one UTF-8 byte per token, so a text's
# bytes bound its tokens; each message adds a few tokens of framing (role markers,
# separators) and a request a few more (the reply's priming).
TOKENS_PER_MESSAGE_BOUND = 8
TOKENS_PER_REQUEST_BOUND = 32


def input_tokens_bound(texts: Iterable[str]) -> int:
    """At least as many tokens as any provider can count for a prompt of these texts (one
    per message, the system prompt included)."""
    return TOKENS_PER_REQUEST_BOUND + sum(
        len(text.encode("utf-8")) + TOKENS_PER_MESSAGE_BOUND for text in texts
    )


def _dearest_input(price: Price) -> int:
    # A cache write can cost more than plain input (Anthropic: 1.25x).
    return max(price.input, price.cache_write or 0)


def worst_case_micro(price: Price, *, input_tokens: int, max_output_tokens: int) -> int:
    """What a turn can cost at most: every input token at the dearest input rate plus the
    longest reply, rounded up."""
    total = input_tokens * _dearest_input(price) + max_output_tokens * price.output
    return -(-total // MICRO)


def output_tokens_affordable(price: Price, *, budget_micro: int, input_tokens: int) -> int:
    """The longest reply whose worst case, with this input, fits in `budget_micro`
    (`worst_case_micro` of it is at most the budget). Unbounded output: a free output."""
    left = budget_micro * MICRO - input_tokens * _dearest_input(price)
    if left < 0:
        return 0
    if price.output <= 0:
        return 2**31
    return left // price.output
