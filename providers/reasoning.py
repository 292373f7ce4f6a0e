"""Which models take a reasoning effort, and what each protocol is sent for it.

One rule, written once: the adapters build their request bodies from `generation_for`, and
the engine records what a reply was sent from the same function, so the small print never
says more than the provider got.

A user picks an effort of `low`, `medium` or `high` (blank: the model's default). What a
model does with it depends on its family (the model id's last path segment, so
OpenRouter's `openai/gpt-5-mini` counts as `gpt-5-mini`):

- OpenAI Chat Completions — the o-series reasoning models (o1, o3, o4-mini...; not the
  early `o1-mini` / `o1-preview`, which take no effort) and the gpt-5 family (not its
  `-chat` variants): `reasoning_effort`. These models only take the default temperature
  (any other is a 400), so no `temperature` is sent to them. `gpt-oss` (Groq, OpenRouter,
  a local server) takes `reasoning_effort` and a temperature.
- Anthropic Messages — Claude 4.6 and later: adaptive thinking,
  `thinking: {type: adaptive}` with `output_config: {effort}` (Claude 4.7 refuses a manual
  budget). Claude 3.7 Sonnet to Claude 4.5 (Haiku 4.5 included): manual extended thinking,
  `thinking: {type: enabled, budget_tokens}`. The budget is a share of the output limit
  (`max_tokens` counts the thinking too): a quarter for low, half for medium, three
  quarters for high, at least Anthropic's minimum of 1,024 and always below `max_tokens`;
  a limit too small for that sends no thinking. Thinking does not combine with a
  temperature, so none is sent while Claude thinks.
- Gemini — the 2.5 family: `generationConfig.thinkingConfig.thinkingBudget`, the same
  shares of `maxOutputTokens` (which counts the thoughts), kept inside each model's range
  (2.5 Pro 128 to 32,768; Flash 1 to 24,576; Flash-Lite 512 to 24,576).

Every other model has no effort setting: none is offered, and none is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Effort(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class ReasoningStyle(StrEnum):
    """How a model takes an effort."""

    NONE = "none"
    OPENAI_EFFORT = "openai_effort"  # reasoning_effort
    ANTHROPIC_ADAPTIVE = "anthropic_adaptive"  # thinking adaptive + output_config.effort
    ANTHROPIC_BUDGET = "anthropic_budget"  # thinking enabled + budget_tokens
    GEMINI_BUDGET = "gemini_budget"  # generationConfig.thinkingConfig.thinkingBudget


# The wire protocols (providers.catalog.WireProtocol's values; named here, not imported, as
# the catalog imports the adapters that import this module).
OPENAI_CHAT = "openai_chat"
ANTHROPIC_MESSAGES = "anthropic_messages"
GEMINI = "gemini"

# The share of the output limit a thinking budget gets, by effort.
_BUDGET_SHARE = {Effort.LOW: 0.25, Effort.MEDIUM: 0.5, Effort.HIGH: 0.75}
ANTHROPIC_MIN_THINKING_BUDGET = 1024

_OPENAI_O_SERIES = re.compile(r"^o[1-9](?:-|$)")
_OPENAI_NO_EFFORT = re.compile(r"^o1-(?:mini|preview)(?:-|$)")
_OPENAI_GPT5 = re.compile(r"^gpt-5(?:[.-]|$)")
_OPENAI_GPT5_CHAT = re.compile(r"^gpt-5(?:\.\d+)?-chat(?:-|$)")
_GPT_OSS = re.compile(r"^gpt-oss(?:-|$)")
# claude-opus-4-7, claude-sonnet-4-20250514 (4.0), claude-haiku-4-5-20251001; the minor is at
# most two digits, so a date is never read as one.
_CLAUDE = re.compile(r"^claude-(?:opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?:-|$)")
_CLAUDE_OLD = re.compile(r"^claude-(\d+)-(\d+)-(opus|sonnet|haiku)(?:-|$)")
# Gemini 2.5 thinking budget ranges, most specific first.
_GEMINI_BUDGETS = (
    (re.compile(r"^gemini-2\.5-flash-lite(?:-|$)"), 512, 24_576),
    (re.compile(r"^gemini-2\.5-flash(?:-|$)"), 1, 24_576),
    (re.compile(r"^gemini-2\.5-pro(?:-|$)"), 128, 32_768),
)


def _model_name(model: str) -> str:
    return model.strip().rsplit("/", 1)[-1].lower()


def reasoning_style(protocol: str, model: str) -> ReasoningStyle:
    """How `model`, spoken to over `protocol`, takes a reasoning effort (NONE: it has none)."""
    name = _model_name(model)
    if protocol == OPENAI_CHAT:
        if _OPENAI_O_SERIES.match(name) and not _OPENAI_NO_EFFORT.match(name):
            return ReasoningStyle.OPENAI_EFFORT
        if _OPENAI_GPT5.match(name) and not _OPENAI_GPT5_CHAT.match(name):
            return ReasoningStyle.OPENAI_EFFORT
        if _GPT_OSS.match(name):
            return ReasoningStyle.OPENAI_EFFORT
    elif protocol == ANTHROPIC_MESSAGES:
        version = _claude_version(name)
        if version is not None and version >= (4, 6):
            return ReasoningStyle.ANTHROPIC_ADAPTIVE
        if version is not None and version >= (3, 7):
            return ReasoningStyle.ANTHROPIC_BUDGET
    elif protocol == GEMINI and _gemini_range(name) is not None:
        return ReasoningStyle.GEMINI_BUDGET
    return ReasoningStyle.NONE


def takes_temperature(protocol: str, model: str) -> bool:
    """False for the OpenAI reasoning models that only accept their default temperature."""
    name = _model_name(model)
    return not (
        protocol == OPENAI_CHAT
        and reasoning_style(protocol, model) is ReasoningStyle.OPENAI_EFFORT
        and not _GPT_OSS.match(name)
    )


def takes_prefill(protocol: str, model: str, effort: str | None) -> bool:
    """Whether a request may end with the assistant's own words for the model to carry on
    from (a prefill): Anthropic Messages only, and not for Claude 4.6 and later (which
    refuse one) nor while Claude thinks (an effort on Claude 3.7 to 4.5), which refuses one
    too. Elsewhere a reply is carried on by asking for it in a user message."""
    if protocol != ANTHROPIC_MESSAGES:
        return False
    style = reasoning_style(protocol, model)
    if style is ReasoningStyle.ANTHROPIC_ADAPTIVE:
        return False
    return not (effort and style is ReasoningStyle.ANTHROPIC_BUDGET)


def _claude_version(name: str) -> tuple[int, int] | None:
    match = _CLAUDE.match(name)
    if match:
        return int(match[1]), int(match[2] or 0)
    match = _CLAUDE_OLD.match(name)
    if match:
        return int(match[1]), int(match[2])
    return None


def _gemini_range(name: str) -> tuple[int, int] | None:
    for pattern, low, high in _GEMINI_BUDGETS:
        if pattern.match(name):
            return low, high
    return None


@dataclass(frozen=True, slots=True)
class Generation:
    """What a request is sent: the output limit, the temperature (None: the provider's
    default, or a model that takes none), the effort as applied (None: none sent) and, for
    the budget styles, the thinking budget that carries it."""

    max_tokens: int
    temperature: float | None = None
    effort: Effort | None = None
    style: ReasoningStyle = ReasoningStyle.NONE
    thinking_budget: int | None = None


def generation_for(
    protocol: str,
    model: str,
    *,
    max_tokens: int,
    temperature: float | None,
    effort: str | None,
) -> Generation:
    """The generation settings `protocol` is sent for `model` (see the module's rule)."""
    style = reasoning_style(protocol, model)
    wanted = Effort(effort) if effort else None
    applied: Effort | None = None
    budget: int | None = None
    if wanted is not None and style is not ReasoningStyle.NONE:
        if style in (ReasoningStyle.OPENAI_EFFORT, ReasoningStyle.ANTHROPIC_ADAPTIVE):
            applied = wanted
        else:
            budget = _thinking_budget(style, _model_name(model), wanted, max_tokens)
            applied = wanted if budget is not None else None
    thinking = applied is not None and protocol == ANTHROPIC_MESSAGES
    if thinking or not takes_temperature(protocol, model):
        temperature = None
    return Generation(
        max_tokens=max_tokens,
        temperature=temperature,
        effort=applied,
        style=style if applied is not None else ReasoningStyle.NONE,
        thinking_budget=budget,
    )


def _thinking_budget(
    style: ReasoningStyle, name: str, effort: Effort, max_tokens: int
) -> int | None:
    """A share of the output limit for thinking, inside the model's range and below the
    limit; None when the limit leaves no room for one."""
    share = int(max_tokens * _BUDGET_SHARE[effort])
    if style is ReasoningStyle.ANTHROPIC_BUDGET:
        low, high = ANTHROPIC_MIN_THINKING_BUDGET, max_tokens - 1
    else:
        bounds = _gemini_range(name)
        assert bounds is not None
        low, high = bounds[0], min(bounds[1], max_tokens - 1)
    budget = min(max(share, low), high)
    return budget if low <= budget < max_tokens else None
