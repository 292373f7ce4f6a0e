"""Google Gemini `generateContent` (ai.google.dev/api/generate-content).

`POST {base}/models/{model}:streamGenerateContent?alt=sse` with the key in the
`x-goog-api-key` header (never in the URL, where it would land in access logs). Roles are
`user` and `model`; the system prompt is `systemInstruction`; limits go in
`generationConfig`. Each event is a whole `GenerateContentResponse`: text in
`candidates[0].content.parts[].text` (parts marked `thought` are reasoning summaries and are
skipped), `finishReason` on the last chunk, and `usageMetadata` (`promptTokenCount`, which
includes `cachedContentTokenCount`; `candidatesTokenCount`; `thoughtsTokenCount`, billed as
output but counted apart). A blocked prompt has no candidates, only
`promptFeedback.blockReason`. Errors are Google RPC statuses; note that an invalid key is a
400 `INVALID_ARGUMENT` whose details say `API_KEY_INVALID`.
"""

from __future__ import annotations

import re

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
    InvalidChatRequest,
    ProviderError,
    ProviderErrorKind,
    bad_request,
    clean_provider_message,
    connection_dropped,
    error_for_status,
    looks_like_context_overflow,
)
from providers.reasoning import GEMINI
from providers.sse import ServerSentEvent
from providers.types import (
    ChatEvent,
    ChatRequest,
    Finish,
    FinishReason,
    ModelInfo,
    Role,
    TextDelta,
    Usage,
)

# The model id goes into the URL path; anything beyond these characters could change which
# endpoint the key is sent to.
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MODEL_PAGE_SIZE = 1000
_MAX_MODEL_PAGES = 10
_RETRY_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")

_FINISH_REASONS = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
    "MALFORMED_FUNCTION_CALL": FinishReason.TOOL_USE,
}

_INVALID_KEY_REASONS = {
    "API_KEY_INVALID",
    "API_KEY_EXPIRED",
    "API_KEY_SERVICE_BLOCKED",
    "API_KEY_HTTP_REFERRER_BLOCKED",
    "API_KEY_IP_ADDRESS_BLOCKED",
    "ACCESS_TOKEN_TYPE_UNSUPPORTED",
}


class GeminiAdapter(HttpAdapter):
    """Adapter for Gemini's generateContent protocol; `base_url` ends in the API version."""

    def __init__(self, *, base_url: str, config: ConnectionConfig) -> None:
        super().__init__(base_url=base_url, config=config)

    def _chat_call(self, request: ChatRequest) -> StreamCall:
        """Raises `InvalidChatRequest` for a model id that cannot be put in the URL."""
        model = request.model.removeprefix("models/")
        if not _MODEL_ID.match(model):
            raise InvalidChatRequest("That model id is not valid for Gemini.")
        body: JSONObject = {
            "contents": [
                {
                    "role": "model" if m.role is Role.ASSISTANT else "user",
                    "parts": [{"text": m.content}],
                }
                for m in request.messages
            ],
        }
        generation = request_generation(GEMINI, request)
        config: JSONObject = {"maxOutputTokens": generation.max_tokens}
        if generation.temperature is not None:
            config["temperature"] = generation.temperature
        if generation.thinking_budget is not None:
            config["thinkingConfig"] = {"thinkingBudget": generation.thinking_budget}
        body["generationConfig"] = config
        if request.system_prompt:
            body["systemInstruction"] = {"parts": [{"text": request.system_prompt}]}
        return StreamCall(
            f"/models/{model}:streamGenerateContent",
            body,
            _ReplyParser(self, request.api_key),
            params={"alt": "sse"},
        )

    def verify(self, api_key: str) -> None:
        """Succeed if Gemini accepts `api_key` (listing models needs a valid key)."""
        self._get_json("/models", api_key=api_key, params={"pageSize": "1"})

    def list_models(self, api_key: str) -> list[ModelInfo]:
        """The models that support generateContent, without the `models/` prefix."""
        models: list[ModelInfo] = []
        params = {"pageSize": str(_MODEL_PAGE_SIZE)}
        for _page in range(_MAX_MODEL_PAGES):
            payload = self._get_json("/models", api_key=api_key, params=params)
            for entry in map(as_dict, as_list(payload.get("models"))):
                name = entry.get("name")
                methods = as_list(entry.get("supportedGenerationMethods"))
                if not isinstance(name, str) or (methods and "generateContent" not in methods):
                    continue
                display_name = entry.get("displayName")
                models.append(
                    ModelInfo(
                        id=name.removeprefix("models/"),
                        display_name=display_name if isinstance(display_name, str) else None,
                    )
                )
            token = payload.get("nextPageToken")
            if not isinstance(token, str) or not token:
                break
            params = {"pageSize": str(_MODEL_PAGE_SIZE), "pageToken": token}
        return models

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key} if api_key else {}

    def _error_from_payload(
        self,
        *,
        status: int | None,
        payload: JSONObject | None,
        retry_after: float | None,
        api_key: str,
    ) -> ProviderError:
        error = as_dict((payload or {}).get("error"))
        message = clean_provider_message(error.get("message"), api_key)
        rpc_status = error.get("status") if isinstance(error.get("status"), str) else ""
        if status is None and isinstance(error.get("code"), int):
            status = error["code"]
        details = [as_dict(detail) for detail in as_list(error.get("details"))]
        reasons = {detail.get("reason") for detail in details}
        if retry_after is None:
            retry_after = _retry_delay(details)

        if reasons & _INVALID_KEY_REASONS or rpc_status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return error_for_status(403 if rpc_status == "PERMISSION_DENIED" else 401)
        if rpc_status == "INVALID_ARGUMENT" and looks_like_context_overflow(message):
            return ProviderError(
                ProviderErrorKind.CONTEXT_TOO_LONG, provider_message=message, status=status
            )
        if rpc_status == "RESOURCE_EXHAUSTED" and status is None:
            status = 429
        if status is not None:
            return error_for_status(status, provider_message=message, retry_after=retry_after)
        if rpc_status in ("INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND"):
            return bad_request(message)
        return ProviderError(ProviderErrorKind.UNAVAILABLE, provider_message=message)


class _ReplyParser(ReplyParser):
    """Each event is a whole `GenerateContentResponse`. Gemini has no end-of-stream marker:
    a stream that stops without a `finishReason` (or a prompt block) was cut off."""

    def __init__(self, adapter: GeminiAdapter, api_key: str) -> None:
        self.adapter = adapter
        self.api_key = api_key
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.block_reason: str | None = None

    def feed(self, event: ServerSentEvent) -> list[ChatEvent]:
        chunk = json_object(event.data)
        if chunk.get("error"):
            raise self.adapter._error_from_payload(
                status=None, payload=chunk, retry_after=None, api_key=self.api_key
            )
        metadata = chunk.get("usageMetadata")
        if isinstance(metadata, dict):
            self.usage = _usage(metadata)
        blocked = as_dict(chunk.get("promptFeedback")).get("blockReason")
        if isinstance(blocked, str):
            self.block_reason = blocked
        candidates = as_list(chunk.get("candidates"))
        if not candidates:
            return []
        candidate = as_dict(candidates[0])
        deltas: list[ChatEvent] = []
        for part in map(as_dict, as_list(as_dict(candidate.get("content")).get("parts"))):
            text = part.get("text")
            if isinstance(text, str) and text and not part.get("thought"):
                deltas.append(TextDelta(text))
        if isinstance(candidate.get("finishReason"), str):
            self.finish_reason = candidate["finishReason"]
        return deltas

    def end(self) -> list[ChatEvent]:
        if self.finish_reason is None and self.block_reason is None:
            raise connection_dropped()
        events: list[ChatEvent] = [] if self.usage is None else [self.usage]
        if self.finish_reason is None:
            events.append(Finish(FinishReason.CONTENT_FILTER, self.block_reason))
        else:
            reason = _FINISH_REASONS.get(self.finish_reason, FinishReason.OTHER)
            events.append(Finish(reason, self.finish_reason))
        return events


def _usage(metadata: JSONObject) -> Usage:
    thoughts = as_int(metadata.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=as_int(metadata.get("promptTokenCount")),
        output_tokens=as_int(metadata.get("candidatesTokenCount")) + thoughts,
        cached_input_tokens=as_int(metadata.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def _retry_delay(details: list[JSONObject]) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail (`"retryDelay": "37s"`), if present."""
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
