"""OpenAI Chat Completions, and every server that speaks it (OpenRouter, Groq, Mistral, ...).

Wire format (platform.openai.com/docs/api-reference/chat): `POST {base}/chat/completions`
with `Authorization: Bearer <key>` and `stream: true`; the reply is server-sent events, each
`data:` a `chat.completion.chunk` whose `choices[0].delta.content` carries text, ended by
`data: [DONE]`. With `stream_options.include_usage` an extra chunk with empty `choices` and the
`usage` object comes before `[DONE]`. Servers differ in small ways this adapter tolerates:
Mistral puts `usage` on the last content chunk, Groq may put it in `x_groq.usage`, DeepSeek
reports cache hits as `prompt_cache_hit_tokens`, OpenRouter sends `: comment` keep-alives and
puts mid-stream failures in an `error` member of a chunk.
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
from providers.reasoning import OPENAI_CHAT
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

_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_USE,
    "function_call": FinishReason.TOOL_USE,
}


class OpenAIChatAdapter(HttpAdapter):
    """Adapter for the OpenAI Chat Completions protocol.

    `verify_path` is what `verify` GETs: `/models` by default (it needs the key on OpenAI and
    most compatible servers); OpenRouter lists models without auth, so its preset uses `/key`.
    `max_tokens_field` is `max_completion_tokens` for OpenAI itself (its reasoning models
    refuse `max_tokens`) and `max_tokens` for the compatible servers that only know that one.
    `request_stream_usage` sends `stream_options.include_usage`; off for servers that reject
    unknown fields and report usage anyway.
    """

    def __init__(
        self,
        *,
        base_url: str,
        config: ConnectionConfig,
        verify_path: str = "/models",
        max_tokens_field: str = "max_tokens",
        request_stream_usage: bool = True,
    ) -> None:
        super().__init__(base_url=base_url, config=config)
        self.verify_path = verify_path
        self.max_tokens_field = max_tokens_field
        self.request_stream_usage = request_stream_usage

    def _chat_call(self, request: ChatRequest) -> StreamCall:
        messages: list[JSONObject] = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages.extend({"role": m.role.value, "content": m.content} for m in request.messages)
        generation = request_generation(OPENAI_CHAT, request)
        body: JSONObject = {
            "model": request.model,
            "messages": messages,
            "stream": True,
            self.max_tokens_field: generation.max_tokens,
        }
        if self.request_stream_usage:
            body["stream_options"] = {"include_usage": True}
        if generation.temperature is not None:
            body["temperature"] = generation.temperature
        if generation.effort is not None:
            body["reasoning_effort"] = generation.effort.value
        return StreamCall("/chat/completions", body, _ReplyParser(self, request.api_key))

    def verify(self, api_key: str) -> None:
        """Succeed if the endpoint accepts `api_key`; raise `ProviderError` otherwise."""
        self._get_json(self.verify_path, api_key=api_key)

    def list_models(self, api_key: str) -> list[ModelInfo]:
        """The models `GET {base}/models` lists for this key, sorted by id."""
        payload = self._get_json("/models", api_key=api_key)
        models = {
            entry["id"]: ModelInfo(id=entry["id"], display_name=entry.get("name") or None)
            for entry in map(as_dict, as_list(payload.get("data")))
            if isinstance(entry.get("id"), str) and entry["id"]
        }
        return [models[model_id] for model_id in sorted(models)]

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def _error_from_payload(
        self,
        *,
        status: int | None,
        payload: JSONObject | None,
        retry_after: float | None,
        api_key: str,
    ) -> ProviderError:
        error = (payload or {}).get("error")
        if isinstance(error, dict):
            raw_message, code, error_type = (
                error.get("message"),
                error.get("code"),
                error.get("type"),
            )
        else:
            # Compatible servers: {"error": "..."}, FastAPI's {"detail": "..."}, vLLM's
            # {"object": "error", "message": ...}.
            fallback = (payload or {}).get("message") or (payload or {}).get("detail")
            raw_message, code, error_type = error or fallback, None, None
        message = clean_provider_message(raw_message, api_key)
        code_text = str(code) if isinstance(code, str | int) else ""
        type_text = error_type if isinstance(error_type, str) else ""
        if status is None and isinstance(code, int) and 400 <= code < 600:
            status = code  # OpenRouter puts the HTTP-like status in error.code mid-stream.

        if "insufficient_quota" in (code_text, type_text) or (
            status in (None, 400, 402, 403, 429) and looks_like_no_credit(message)
        ):
            return ProviderError(
                ProviderErrorKind.NO_CREDIT, provider_message=message, status=status
            )
        if code_text == "invalid_api_key" or status in (401, 403):
            return error_for_status(status or 401, provider_message=message)
        if code_text == "context_length_exceeded" or looks_like_context_overflow(
            message, code_text
        ):
            return ProviderError(
                ProviderErrorKind.CONTEXT_TOO_LONG, provider_message=message, status=status
            )
        if code_text == "rate_limit_exceeded" and status is None:
            status = 429
        if status is not None:
            return error_for_status(status, provider_message=message, retry_after=retry_after)
        if type_text == "invalid_request_error":
            return bad_request(message)
        return ProviderError(ProviderErrorKind.UNAVAILABLE, provider_message=message)


class _ReplyParser(ReplyParser):
    """Chunks carry text in `choices[0].delta.content`; `[DONE]` ends the reply (a server
    that omits it has ended once a `finish_reason` came)."""

    def __init__(self, adapter: OpenAIChatAdapter, api_key: str) -> None:
        self.adapter = adapter
        self.api_key = api_key
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    def feed(self, event: ServerSentEvent) -> list[ChatEvent]:
        if event.data.strip() == "[DONE]":
            self.complete = True
            return []
        chunk = json_object(event.data)
        if chunk.get("error"):
            raise self.adapter._error_from_payload(
                status=None, payload=chunk, retry_after=None, api_key=self.api_key
            )
        reported = chunk.get("usage") or as_dict(chunk.get("x_groq")).get("usage")
        if isinstance(reported, dict):
            self.usage = _usage(reported)
        deltas: list[ChatEvent] = []
        for choice in map(as_dict, as_list(chunk.get("choices"))):
            if as_int(choice.get("index")) != 0:
                continue
            content = as_dict(choice.get("delta")).get("content")
            if isinstance(content, str) and content:
                deltas.append(TextDelta(content))
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
        return deltas

    def end(self) -> list[ChatEvent]:
        if not self.complete and self.finish_reason is None:
            raise connection_dropped()
        events: list[ChatEvent] = [] if self.usage is None else [self.usage]
        reason = _FINISH_REASONS.get(self.finish_reason or "", FinishReason.OTHER)
        events.append(Finish(reason, self.finish_reason))
        return events


def _usage(reported: JSONObject) -> Usage:
    prompt_details = as_dict(reported.get("prompt_tokens_details"))
    completion_details = as_dict(reported.get("completion_tokens_details"))
    cached = as_int(prompt_details.get("cached_tokens")) or as_int(
        reported.get("prompt_cache_hit_tokens")
    )
    return Usage(
        input_tokens=as_int(reported.get("prompt_tokens")),
        output_tokens=as_int(reported.get("completion_tokens")),
        cached_input_tokens=cached,
        reasoning_tokens=as_int(completion_details.get("reasoning_tokens")),
    )
