"""Anthropic Messages (docs.claude.com/en/api/messages-streaming).

`POST {base}/v1/messages` with `x-api-key` and `anthropic-version`; the system prompt is its
own `system` field and `max_tokens` is required. The stream is named events:
`message_start` (usage so far: input and cache tokens), `content_block_start`,
`content_block_delta` (`text_delta` carries text; thinking and tool deltas are skipped),
`content_block_stop`, `message_delta` (`stop_reason`, cumulative usage), `message_stop`,
plus `ping` keep-alives and `error` events mid-stream (e.g. `overloaded_error`). Unknown
event types are ignored, as Anthropic asks of clients.
"""

from __future__ import annotations

from providers.base import (
    HttpAdapter,
    JSONObject,
    ReplyParser,
    StreamCall,
    as_dict,
    as_int,
    as_list,
    json_object,
    request_generation,
)
from providers.connections import ConnectionConfig
from providers.errors import (
    ProviderError,
    ProviderErrorKind,
    bad_request,
    clean_provider_message,
    connection_dropped,
    error_for_status,
    looks_like_context_overflow,
    looks_like_no_credit,
)
from providers.reasoning import ANTHROPIC_MESSAGES, ReasoningStyle
from providers.sse import ServerSentEvent
from providers.types import (
    ChatEvent,
    ChatRequest,
    Finish,
    FinishReason,
    ModelInfo,
    TextDelta,
    Usage,
)

ANTHROPIC_VERSION = "2023-06-01"
_MODEL_PAGE_LIMIT = 1000
_MAX_MODEL_PAGES = 10

_FINISH_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "refusal": FinishReason.CONTENT_FILTER,
    "tool_use": FinishReason.TOOL_USE,
}

# error.type -> kind; the HTTP status is the fallback for types not listed.
_ERROR_TYPES = {
    "authentication_error": ProviderErrorKind.INVALID_KEY,
    "permission_error": ProviderErrorKind.INVALID_KEY,
    "billing_error": ProviderErrorKind.NO_CREDIT,
    "rate_limit_error": ProviderErrorKind.RATE_LIMITED,
    "overloaded_error": ProviderErrorKind.UNAVAILABLE,
    "api_error": ProviderErrorKind.UNAVAILABLE,
    # A 504 from Anthropic is its own gateway giving up: the provider is unavailable.
    "timeout_error": ProviderErrorKind.UNAVAILABLE,
    "request_too_large": ProviderErrorKind.CONTEXT_TOO_LONG,
}


class AnthropicMessagesAdapter(HttpAdapter):
    """Adapter for the Anthropic Messages protocol; `base_url` is the host (no `/v1`)."""

    def __init__(self, *, base_url: str, config: ConnectionConfig) -> None:
        super().__init__(base_url=base_url, config=config)

    def _chat_call(self, request: ChatRequest) -> StreamCall:
        generation = request_generation(ANTHROPIC_MESSAGES, request)
        body: JSONObject = {
            "model": request.model,
            "max_tokens": generation.max_tokens,
            "messages": [{"role": m.role.value, "content": m.content} for m in request.messages],
            "stream": True,
        }
        if request.system_prompt:
            body["system"] = request.system_prompt
        if generation.temperature is not None:
            body["temperature"] = generation.temperature
        if generation.style is ReasoningStyle.ANTHROPIC_ADAPTIVE and generation.effort:
            body["thinking"] = {"type": "adaptive"}
            body["output_config"] = {"effort": generation.effort.value}
        elif generation.style is ReasoningStyle.ANTHROPIC_BUDGET and generation.thinking_budget:
            body["thinking"] = {"type": "enabled", "budget_tokens": generation.thinking_budget}
        return StreamCall("/v1/messages", body, _ReplyParser(self, request.api_key))

    def verify(self, api_key: str) -> None:
        """Succeed if Anthropic accepts `api_key` (GET /v1/models needs a valid key)."""
        self._get_json("/v1/models", api_key=api_key, params={"limit": "1"})

    def list_models(self, api_key: str) -> list[ModelInfo]:
        """Every model `GET /v1/models` lists for this key, following its pagination."""
        models: list[ModelInfo] = []
        params = {"limit": str(_MODEL_PAGE_LIMIT)}
        for _page in range(_MAX_MODEL_PAGES):
            payload = self._get_json("/v1/models", api_key=api_key, params=params)
            for entry in map(as_dict, as_list(payload.get("data"))):
                if isinstance(entry.get("id"), str) and entry["id"]:
                    name = entry.get("display_name")
                    models.append(
                        ModelInfo(
                            id=entry["id"], display_name=name if isinstance(name, str) else None
                        )
                    )
            last_id = payload.get("last_id")
            if payload.get("has_more") is not True or not isinstance(last_id, str):
                break
            params = {"limit": str(_MODEL_PAGE_LIMIT), "after_id": last_id}
        return models

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def _error_from_payload(
        self,
        *,
        status: int | None,
        payload: JSONObject | None,
        retry_after: float | None,
        api_key: str,
    ) -> ProviderError:
        error = as_dict((payload or {}).get("error"))
        error_type = error.get("type") if isinstance(error.get("type"), str) else ""
        message = clean_provider_message(error.get("message"), api_key)
        details = as_dict(error.get("details"))
        kind = _ERROR_TYPES.get(str(error_type))

        if details.get("error_code") == "enforced_spend_limit_reached" or (
            error_type == "invalid_request_error" and looks_like_no_credit(message)
        ):
            # A spend limit is not a rate limit: waiting a minute will not lift it.
            kind = ProviderErrorKind.NO_CREDIT
        elif error_type == "invalid_request_error" and looks_like_context_overflow(message):
            kind = ProviderErrorKind.CONTEXT_TOO_LONG
        if kind is None:
            if status is not None:
                return error_for_status(status, provider_message=message, retry_after=retry_after)
            if error_type in ("invalid_request_error", "not_found_error"):
                return bad_request(message)
            kind = ProviderErrorKind.UNAVAILABLE
        if kind is ProviderErrorKind.INVALID_KEY:
            return error_for_status(status if status in (401, 403) else 401)
        return ProviderError(kind, provider_message=message, retry_after=retry_after, status=status)


class _ReplyParser(ReplyParser):
    """Named events; text in `content_block_start` / `content_block_delta`, the stop reason
    and cumulative usage in `message_delta`; `message_stop` ends the reply."""

    def __init__(self, adapter: AnthropicMessagesAdapter, api_key: str) -> None:
        self.adapter = adapter
        self.api_key = api_key
        self.usage = _UsageCounter()
        self.stop_reason: str | None = None

    def feed(self, event: ServerSentEvent) -> list[ChatEvent]:
        data = json_object(event.data)
        # The event name and data.type agree on Anthropic; a compatible server may send only
        # one of them.
        kind = data.get("type") if isinstance(data.get("type"), str) else event.event
        if kind == "error" or event.event == "error":
            raise self.adapter._error_from_payload(
                status=None, payload=data, retry_after=None, api_key=self.api_key
            )
        if kind == "message_start":
            self.usage.update(as_dict(as_dict(data.get("message")).get("usage")))
        elif kind == "content_block_start":
            block = as_dict(data.get("content_block"))
            text = block.get("text")
            if block.get("type") == "text" and isinstance(text, str) and text:
                return [TextDelta(text)]
        elif kind == "content_block_delta":
            delta = as_dict(data.get("delta"))
            text = delta.get("text")
            if delta.get("type") == "text_delta" and isinstance(text, str) and text:
                return [TextDelta(text)]
        elif kind == "message_delta":
            reason = as_dict(data.get("delta")).get("stop_reason")
            if isinstance(reason, str):
                self.stop_reason = reason
            self.usage.update(as_dict(data.get("usage")))
        elif kind == "message_stop":
            self.complete = True
        return []

    def end(self) -> list[ChatEvent]:
        if not self.complete and self.stop_reason is None:
            raise connection_dropped()
        events: list[ChatEvent] = [self.usage.result()] if self.usage.reported else []
        reason = _FINISH_REASONS.get(self.stop_reason or "", FinishReason.OTHER)
        events.append(Finish(reason, self.stop_reason))
        return events


class _UsageCounter:
    """Anthropic's usage arrives in pieces: input and cache counts in `message_start`,
    cumulative output (and sometimes updated input) counts in each `message_delta`."""

    def __init__(self) -> None:
        self.reported = False
        self._counts: dict[str, int] = {}

    def update(self, usage: JSONObject) -> None:
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ):
            if name in usage and usage[name] is not None:
                self._counts[name] = as_int(usage[name])
                self.reported = True

    def result(self) -> Usage:
        cache_read = self._counts.get("cache_read_input_tokens", 0)
        cache_write = self._counts.get("cache_creation_input_tokens", 0)
        # Anthropic's input_tokens excludes cached tokens; ours includes them (see Usage).
        return Usage(
            input_tokens=self._counts.get("input_tokens", 0) + cache_read + cache_write,
            output_tokens=self._counts.get("output_tokens", 0),
            cached_input_tokens=cache_read,
            cache_write_input_tokens=cache_write,
        )
