"""Typed requests and events shared by every adapter.

A stream from `ChatAdapter.astream_chat` yields `TextDelta`s as text arrives, then at most one
`Usage` (the provider's own token counts, when it sent them), then exactly one `Finish`.
If the stream fails part-way, the deltas already yielded stay yielded and a `ProviderError`
is raised: the caller keeps the partial text.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeAlias

from providers.errors import InvalidChatRequest
from providers.reasoning import Effort

# Far above any model's output limit today; a larger number is a bug or an abuse, and a
# budget reservation computed from it would be meaningless.
MAX_TOKENS_CEILING = 1_000_000
MAX_MODEL_ID_LENGTH = 200
REASONING_EFFORTS = tuple(effort.value for effort in Effort)


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat call. Validated on construction, so an adapter never sees a nonsense request.

        `system_prompt` goes where each protocol wants it (a system message, Anthropic's `system`
        field, Gemini's `systemInstruction`). `temperature=None` leaves the provider's default;
    `reasoning_effort=None` the model's.
        `api_key` may be empty for endpoints without auth (a local Ollama); it is never shown in
        the repr.
    """

    model: str
    messages: Sequence[ChatMessage]
    api_key: str = field(repr=False)
    system_prompt: str | None = None
    max_tokens: int = 4096
    temperature: float | None = None
    # low / medium / high, or None for the model's default; what each protocol and model is
    # sent for it is `providers.reasoning.generation_for`'s rule (nothing, for most models).
    reasoning_effort: str | None = None

    def __post_init__(self) -> None:
        model = self.model.strip() if isinstance(self.model, str) else ""
        if not model:
            raise InvalidChatRequest("Choose a model.")
        if len(model) > MAX_MODEL_ID_LENGTH or any(ch.isspace() for ch in model):
            raise InvalidChatRequest("That model id is not valid.")
        object.__setattr__(self, "model", model)
        if isinstance(self.messages, str | bytes):
            raise InvalidChatRequest("The messages must be a list of ChatMessage.")
        messages: list[ChatMessage] = []
        for message in self.messages:
            if not isinstance(message, ChatMessage):
                raise InvalidChatRequest("The messages must be a list of ChatMessage.")
            try:
                role = Role(message.role)
            except ValueError:
                raise InvalidChatRequest("Each message needs the role user or assistant.") from None
            if not isinstance(message.content, str) or not message.content:
                raise InvalidChatRequest("A message in the conversation is empty.")
            # A plain "user" string becomes Role.USER, so adapters can rely on the enum.
            messages.append(ChatMessage(role, message.content))
        if not messages:
            raise InvalidChatRequest("The conversation has no messages to send.")
        object.__setattr__(self, "messages", tuple(messages))
        if (
            isinstance(self.max_tokens, bool)
            or not isinstance(self.max_tokens, int)
            or not 1 <= self.max_tokens <= MAX_TOKENS_CEILING
        ):
            raise InvalidChatRequest(
                f"The reply length limit must be between 1 and {MAX_TOKENS_CEILING:,} tokens."
            )
        if self.temperature is not None and (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, int | float)
            or math.isnan(self.temperature)
            or not 0 <= self.temperature <= 2
        ):
            raise InvalidChatRequest("The temperature must be between 0 and 2.")
        if self.reasoning_effort is not None and self.reasoning_effort not in REASONING_EFFORTS:
            raise InvalidChatRequest("The reasoning effort must be low, medium or high.")


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them, normalised across vendors.

    `input_tokens` counts every input token, including those read from or written to a cache
    (so `cached_input_tokens` and `cache_write_input_tokens` are parts of it, never extra).
    `output_tokens` counts every billed output token, including hidden reasoning tokens
    (`reasoning_tokens` is the part of it spent thinking).
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    reasoning_tokens: int = 0


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_USE = "tool_use"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    # The vendor's own word for it ("end_turn", "MAX_TOKENS"), kept for diagnostics.
    provider_reason: str | None = None


ChatEvent: TypeAlias = TextDelta | Usage | Finish


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    display_name: str | None = None


class ChatAdapter(Protocol):
    """The shape every wire-protocol adapter has."""

    def astream_chat(self, request: ChatRequest) -> AsyncGenerator[ChatEvent, None]:
        """Stream one reply on an asyncio event loop. Raises `ProviderError` (or
        `InvalidEndpoint` from the guard)."""
        ...

    def verify(self, api_key: str) -> None:
        """Return if the provider accepts `api_key`; raise `ProviderError` otherwise."""
        ...

    def list_models(self, api_key: str) -> list[ModelInfo]:
        """The model ids this key can use, as the provider lists them."""
        ...
