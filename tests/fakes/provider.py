"""A fake LLM provider: a real HTTP server speaking the OpenAI, Anthropic and Gemini protocols.

Tests, a Celery worker in another process, or a benchmark point a provider base URL at it and
get realistic wire traffic: server-sent events with the vendors' own event shapes, keep-alive,
chunked transfer encoding, the vendors' error bodies. Behaviour is scripted per request:

    fake.script(text="Hi there", tokens_per_second=50, usage={"input_tokens": 7})
    fake.script(error="rate_limited", retry_after=3)
    fake.script(drop_after_tokens=2)

or over HTTP: `POST /__fake__/script` with the same fields as JSON (a list queues several).
Each request that is not a control request takes the next queued script whose `path` filter
it matches; with none it answers with `DEFAULT_REPLY`. Every request is recorded (method,
path, query, headers, JSON body) in `fake.requests` and at `GET /__fake__/requests`.

Run on its own: `python -m tests.fakes.provider --port 8765`.

Paths (any prefix, so every preset's base URL works):
  POST .../chat/completions                       OpenAI Chat Completions (stream or not)
  POST .../v1/messages                            Anthropic Messages (stream or not)
  POST .../models/{model}:streamGenerateContent   Gemini (with ?alt=sse), and :generateContent
  GET  .../models                                 model list: Anthropic's shape when the request
                                                  has anthropic-version/x-api-key, Gemini's for
                                                  /v1beta/ or x-goog-api-key, else OpenAI's
  GET  .../key                                    OpenRouter's current-key endpoint
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

DEFAULT_REPLY = "Hello from the fake provider. This reply is the same every time."
CONTROL_PREFIX = "/__fake__/"

OPENAI = "openai"
ANTHROPIC = "anthropic"
GEMINI = "gemini"

DEFAULT_MODELS = {
    OPENAI: ["fake-gpt-large", "fake-gpt-mini"],
    ANTHROPIC: ["fake-claude-sonnet", "fake-claude-haiku"],
    GEMINI: ["fake-gemini-pro", "fake-gemini-flash"],
}

# The base URL, relative to the server root, under which each preset's paths line up with the
# fake's routes.
BASE_PATHS = {
    "openai": "/v1",
    "anthropic": "",
    "gemini": "/v1beta",
    "openrouter": "/api/v1",
    "groq": "/openai/v1",
    "mistral": "/v1",
    "deepseek": "",
    "together": "/v1",
    "ollama": "/v1",
    "demo": "/v1",
    "custom": "/v1",
}

_TOKEN = re.compile(r"\s*\S+\s*|\s+")


@dataclass
class Script:
    """What the fake does for one request. Every field has a harmless default.

    Errors: `error` names a vendor error (see ERROR_NAMES) answered with that vendor's real
    status and body; `status` alone answers a generic body with that status; `error_body`
    replaces the body verbatim; `error_message` replaces only the message. `retry_after` sets
    the Retry-After header. `redirect_to` answers 302 with that Location.

    Streams: `first_token_delay` seconds before the first token, then `tokens_per_chunk`
    tokens per event at `tokens_per_second` (None: as fast as possible). `drop_after_tokens`
    cuts the connection after that many tokens; `malformed_after_tokens` sends an event
    whose JSON is broken; `stream_error` (an error name) sends the vendor's in-stream error
    event after `stream_error_after_tokens` tokens. `line_ending` "\\r\\n" sends CRLF lines.
    `chunk_bytes` re-cuts the stream into HTTP chunks of that many bytes, splitting events,
    line endings and multi-byte characters wherever they fall.
    `usage` overrides counts: input_tokens, output_tokens, cached_tokens,
    cache_write_tokens, reasoning_tokens. `openai_usage_style` picks where an OpenAI-protocol
    stream reports them: "usage_chunk" (OpenAI: a final chunk, only when the request set
    stream_options.include_usage), "finish_chunk" (Mistral), "x_groq" (Groq), "deepseek"
    (prompt_cache_hit_tokens on the finish chunk). `block_reason` makes a Gemini stream a
    blocked prompt: one event with promptFeedback.blockReason and no candidates. `thinking`
    streams reasoning first, the way each vendor marks it (Anthropic thinking blocks, Gemini
    `thought` parts, DeepSeek `reasoning_content`), which is not part of the reply text.
    `response_delay` waits that many seconds before answering at all (no status line, no
    headers): a provider slow to accept a request. `linger_after_end` holds the body open that
    many seconds after the reply's last event (end marker included). `path` restricts the
    script to requests whose path contains it.
    """

    text: str | None = None
    status: int | None = None
    error: str | None = None
    error_message: str | None = None
    error_body: Any = None
    retry_after: float | str | None = None
    redirect_to: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    first_token_delay: float = 0.0
    tokens_per_second: float | None = None
    tokens_per_chunk: int = 1
    usage: dict[str, int] = field(default_factory=dict)
    include_usage: bool = True
    block_reason: str | None = None
    thinking: str | None = None
    openai_usage_style: str = "usage_chunk"
    finish_reason: str | None = None
    drop_after_tokens: int | None = None
    malformed_after_tokens: int | None = None
    stream_error: str | None = None
    stream_error_after_tokens: int = 0
    line_ending: str = "\n"
    chunk_bytes: int | None = None
    response_delay: float = 0.0
    linger_after_end: float = 0.0
    path: str | None = None

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Script:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(payload) - known
        if unknown:
            raise ValueError(f"unknown script fields: {sorted(unknown)}")
        return cls(**payload)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: str
    client_port: int

    @property
    def api_key(self) -> str | None:
        """The key as the request carried it, in whichever header its protocol uses."""
        authorization = self.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[7:]
        return self.headers.get("x-api-key") or self.headers.get("x-goog-api-key")

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _openai_error(
    message: str, error_type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _anthropic_error(error_type: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_fake0123456789",
    }


def _gemini_error(
    code: int, status: str, message: str, details: list[Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


# name -> protocol -> (status, body). Bodies follow the vendors' published error formats.
ERRORS: dict[str, dict[str, tuple[int, Any]]] = {
    "invalid_key": {
        OPENAI: (
            401,
            _openai_error(
                "Incorrect API key provided: sk-fake***********wxyz. You can find your API key "
                "at https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            ),
        ),
        ANTHROPIC: (401, _anthropic_error("authentication_error", "invalid x-api-key")),
        GEMINI: (
            400,
            _gemini_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            ),
        ),
    },
    "permission_denied": {
        OPENAI: (
            403,
            _openai_error(
                "Country, region, or territory not supported",
                "request_forbidden",
                "unsupported_country_region_territory",
            ),
        ),
        ANTHROPIC: (
            403,
            _anthropic_error(
                "permission_error", "Your API key does not have permission to use this resource."
            ),
        ),
        GEMINI: (
            403,
            _gemini_error(403, "PERMISSION_DENIED", "Permission denied: consumer suspended."),
        ),
    },
    "no_credit": {
        OPENAI: (
            429,
            _openai_error(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            ),
        ),
        ANTHROPIC: (
            400,
            _anthropic_error(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to "
                "Plans & Billing to upgrade or purchase credits.",
            ),
        ),
    },
    "payment_required": {
        # OpenRouter and DeepSeek answer an empty balance with 402.
        OPENAI: (
            402,
            {"error": {"code": 402, "message": "Insufficient credits. Add more using /credits"}},
        ),
        ANTHROPIC: (
            402,
            _anthropic_error("billing_error", "There is an issue with your billing details."),
        ),
    },
    "rate_limited": {
        OPENAI: (
            429,
            _openai_error(
                "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1.",
                "requests",
                "rate_limit_exceeded",
            ),
        ),
        ANTHROPIC: (
            429,
            _anthropic_error(
                "rate_limit_error",
                "This request would exceed the rate limit for your organization.",
            ),
        ),
        GEMINI: (
            429,
            _gemini_error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details.",
                [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}],
            ),
        ),
    },
    "overloaded": {
        OPENAI: (
            503,
            _openai_error(
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
            ),
        ),
        ANTHROPIC: (529, _anthropic_error("overloaded_error", "Overloaded")),
        GEMINI: (
            503,
            _gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        ),
    },
    "server_error": {
        OPENAI: (
            500,
            _openai_error(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            ),
        ),
        ANTHROPIC: (500, _anthropic_error("api_error", "Internal server error")),
        GEMINI: (500, _gemini_error(500, "INTERNAL", "An internal error has occurred.")),
    },
    "bad_gateway": {
        OPENAI: (502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
        ANTHROPIC: (502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
        GEMINI: (502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
    },
    "gateway_timeout": {
        OPENAI: (504, _openai_error("Gateway timeout.", "server_error", None)),
        ANTHROPIC: (504, _anthropic_error("timeout_error", "Request timeout")),
        GEMINI: (504, _gemini_error(504, "DEADLINE_EXCEEDED", "Deadline expired.")),
    },
    "context_too_long": {
        OPENAI: (
            400,
            _openai_error(
                "This model's maximum context length is 128000 tokens. However, your messages "
                "resulted in 130412 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                "context_length_exceeded",
                "messages",
            ),
        ),
        ANTHROPIC: (
            400,
            _anthropic_error(
                "invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"
            ),
        ),
        GEMINI: (
            400,
            _gemini_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1212000) exceeds the maximum number of tokens allowed "
                "(1048576).",
            ),
        ),
    },
    "model_not_found": {
        OPENAI: (
            404,
            _openai_error(
                "The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            ),
        ),
        ANTHROPIC: (404, _anthropic_error("not_found_error", "model: {model}")),
        GEMINI: (
            404,
            _gemini_error(
                404,
                "NOT_FOUND",
                "models/{model} is not found for API version v1beta, or is not supported for "
                "generateContent. Call ListModels to see the list of available models and "
                "their supported methods.",
            ),
        ),
    },
    "bad_request": {
        OPENAI: (
            400,
            _openai_error(
                "Invalid value for 'temperature': must be between 0 and 2.",
                "invalid_request_error",
                "invalid_value",
                "temperature",
            ),
        ),
        ANTHROPIC: (
            400,
            _anthropic_error("invalid_request_error", "temperature: range: 0..1"),
        ),
        GEMINI: (
            400,
            _gemini_error(
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), 3",
            ),
        ),
    },
}

ERROR_NAMES = tuple(ERRORS)


class _DropConnection(Exception):
    """Raised inside a handler to cut the connection without finishing the response."""


class FakeProvider:
    """The fake provider server. Start it, point base URLs at it, script it, read its records."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._scripts: list[Script] = []
        self._requests: list[RecordedRequest] = []
        self.accepted_keys: set[str] | None = None
        self.models: dict[str, list[str]] = {k: list(v) for k, v in DEFAULT_MODELS.items()}
        self._server = _Server((host, port), _Handler, fake=self, ssl_context=ssl_context)
        self._thread: threading.Thread | None = None
        self.scheme = "https" if ssl_context else "http"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeProvider:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-provider",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def base_url(self, preset: str) -> str:
        """The base URL to give a preset (by slug: "openai", "anthropic", "openrouter", ...)."""
        return self.url + BASE_PATHS[preset]

    # -- scripting ---------------------------------------------------------------------------

    def script(self, script: Script | None = None, /, **fields: Any) -> Script:
        """Queue behaviour for one upcoming request; returns the queued `Script`."""
        queued = script if script is not None else Script(**fields)
        if queued.error is not None and queued.error not in ERRORS:
            raise ValueError(f"unknown error name {queued.error!r}; known: {ERROR_NAMES}")
        with self._lock:
            self._scripts.append(queued)
        return queued

    def accept_only_keys(self, *keys: str) -> None:
        """Answer every request whose key is not one of `keys` with the vendor's 401."""
        with self._lock:
            self.accepted_keys = set(keys)

    def reset(self) -> None:
        """Forget scripts, records and key restrictions."""
        with self._lock:
            self._scripts.clear()
            self._requests.clear()
            self.accepted_keys = None
            self.models = {k: list(v) for k, v in DEFAULT_MODELS.items()}

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def pending_scripts(self) -> int:
        with self._lock:
            return len(self._scripts)

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_script(self, path: str) -> Script:
        with self._lock:
            for index, script in enumerate(self._scripts):
                if script.path is None or script.path in path:
                    return self._scripts.pop(index)
        return Script()

    def script_for(self, request: RecordedRequest) -> Script:
        """The behaviour for `request`: the next queued script that matches its path."""
        return self._next_script(request.path)

    def _key_refused(self, key: str | None) -> bool:
        with self._lock:
            return self.accepted_keys is not None and key not in self.accepted_keys


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        fake: FakeProvider,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.fake = fake
        self.ssl_context = ssl_context
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread, so one slow client
        # cannot hold up the accept loop.
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        try:
            tls_request = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls_request, client_address)
        finally:
            tls_request.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeProvider/1.0"
    # Idle keep-alive connections are closed after this long.
    timeout = 30
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without this, headers and body leave in two segments and Nagle's algorithm meets the
        # client's delayed ACK: every response would take an extra 40 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: a test run would otherwise print a line per request.
        pass

    # -- dispatch ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path, query = split.path, dict(parse_qsl(split.query))
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        text = raw.decode("utf-8", errors="replace")
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        try:
            if path.startswith(CONTROL_PREFIX):
                self._control(path, body)
                return
            recorded = RecordedRequest(
                method=self.command,
                path=path,
                query=query,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
                raw_body=text,
                client_port=int(self.client_address[1]),
            )
            fake = self.server.fake
            fake._record(recorded)
            self._serve(recorded, fake.script_for(recorded))
        except _DropConnection:
            self._drop()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _serve(self, request: RecordedRequest, script: Script) -> None:
        if script.response_delay:
            time.sleep(script.response_delay)
        protocol, action, model = _route(request)
        if action is None:
            self._send_json(404, {"error": {"message": f"no route for {request.path}"}})
            return
        if script.redirect_to:
            self._send_json(302, {}, headers={"location": script.redirect_to})
            return
        if self.server.fake._key_refused(request.api_key) and script.error is None:
            script = dataclasses.replace(script, error="invalid_key")
        if script.error is not None or script.status is not None or script.error_body is not None:
            self._send_error(protocol, script, model)
            return
        if action == "models":
            self._send_json(200, _models_body(protocol, self.server.fake.models[protocol]))
        elif action == "key":
            self._send_json(200, _openrouter_key_body(request.api_key))
        elif _wants_stream(protocol, request):
            self._stream_reply(protocol, request, script, model)
        else:
            self._send_json(200, _complete_body(protocol, request, script, model))

    # -- control -----------------------------------------------------------------------------

    def _control(self, path: str, body: Any) -> None:
        fake = self.server.fake
        command = path[len(CONTROL_PREFIX) :]
        if command == "script" and self.command == "POST":
            entries = body if isinstance(body, list) else [body or {}]
            try:
                queued = [fake.script(Script.from_json(entry)) for entry in entries]
            except (TypeError, ValueError) as exc:
                self._send_json(400, {"error": str(exc)})
                return
            self._send_json(200, {"queued": len(queued)})
        elif command == "requests" and self.command == "GET":
            self._send_json(200, [r.as_json() for r in fake.requests])
        elif command == "reset" and self.command == "POST":
            fake.reset()
            self._send_json(200, {"reset": True})
        elif command == "keys" and self.command == "POST":
            keys = (body or {}).get("accepted_keys")
            with fake._lock:
                fake.accepted_keys = None if keys is None else set(keys)
            self._send_json(200, {"accepted_keys": keys})
        else:
            self._send_json(404, {"error": f"unknown control request {path}"})

    # -- responses ---------------------------------------------------------------------------

    def _send_json(
        self, status: int, payload: Any, *, headers: dict[str, str] | None = None
    ) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        content_type = "application/json"
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/html"
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error(self, protocol: str, script: Script, model: str) -> None:
        if script.error is not None:
            status, body = ERRORS[script.error].get(protocol) or ERRORS["bad_request"][protocol]
        else:
            status = script.status or 500
            body = _generic_error(protocol, status)
        if script.status is not None:
            status = script.status
        if script.error_body is not None:
            body = script.error_body
        elif script.error_message is not None:
            body = _with_message(protocol, body, script.error_message)
        body = _fill_model(body, model)
        headers = dict(script.headers)
        if script.retry_after is not None:
            headers["retry-after"] = str(script.retry_after)
        self._send_json(status, body, headers=headers)

    def _stream_reply(
        self, protocol: str, request: RecordedRequest, script: Script, model: str
    ) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        for name, value in script.headers.items():
            self.send_header(name, value)
        self.end_headers()
        pending = b""
        for event in _stream_events(protocol, request, script, model):
            if isinstance(event, str):
                pending += event.replace("\n", script.line_ending).encode()
                size = script.chunk_bytes or len(pending)
                while pending and len(pending) >= size:
                    self._write_chunk(pending[:size])
                    pending = pending[size:]
                continue
            if pending:
                self._write_chunk(pending)
                pending = b""
            if event is _DROP:
                raise _DropConnection
            time.sleep(event)
        if pending:
            self._write_chunk(pending)
        time.sleep(script.linger_after_end)
        self._write_chunk(b"")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)


_DROP = object()


def _route(request: RecordedRequest) -> tuple[str, str | None, str]:
    """(protocol, action, model) for a request; action None when nothing matches."""
    path = request.path.rstrip("/")
    body = request.body if isinstance(request.body, dict) else {}
    model = str(body.get("model", ""))
    headers = request.headers
    if request.method == "POST":
        if path.endswith("/chat/completions"):
            return OPENAI, "chat", model
        if path.endswith("/messages"):
            return ANTHROPIC, "chat", model
        match = re.search(r"/models/([^/:]+):(streamGenerateContent|generateContent)$", path)
        if match:
            return GEMINI, match.group(2), match.group(1)
    elif request.method == "GET":
        if path.endswith("/models"):
            if "anthropic-version" in headers or "x-api-key" in headers:
                return ANTHROPIC, "models", model
            if "/v1beta" in path or "x-goog-api-key" in headers:
                return GEMINI, "models", model
            return OPENAI, "models", model
        if path.endswith("/key"):
            return OPENAI, "key", model
    protocol = GEMINI if "/v1beta" in path else ANTHROPIC if "x-api-key" in headers else OPENAI
    return protocol, None, model


def _wants_stream(protocol: str, request: RecordedRequest) -> bool:
    if protocol == GEMINI:
        return request.path.endswith(":streamGenerateContent")
    return isinstance(request.body, dict) and request.body.get("stream") is True


def _reply_tokens(script: Script) -> list[str]:
    return _TOKEN.findall(DEFAULT_REPLY if script.text is None else script.text)


def _input_token_estimate(request: RecordedRequest) -> int:
    """A deterministic stand-in for tokenisation: words in everything the request sent."""
    body = request.body if isinstance(request.body, dict) else {}
    return max(1, len(_TOKEN.findall(json.dumps(body.get("messages") or body.get("contents")))))


def _counts(request: RecordedRequest, script: Script, output_tokens: int) -> dict[str, int]:
    counts = {
        "input_tokens": _input_token_estimate(request),
        "output_tokens": output_tokens,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    }
    counts.update(script.usage)
    return counts


def _openai_usage(counts: dict[str, int]) -> dict[str, Any]:
    return {
        "prompt_tokens": counts["input_tokens"],
        "completion_tokens": counts["output_tokens"],
        "total_tokens": counts["input_tokens"] + counts["output_tokens"],
        "prompt_tokens_details": {"cached_tokens": counts["cached_tokens"], "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": counts["reasoning_tokens"],
            "audio_tokens": 0,
        },
    }


def _deepseek_usage(counts: dict[str, int]) -> dict[str, Any]:
    return {
        "prompt_tokens": counts["input_tokens"],
        "completion_tokens": counts["output_tokens"],
        "total_tokens": counts["input_tokens"] + counts["output_tokens"],
        "prompt_cache_hit_tokens": counts["cached_tokens"],
        "prompt_cache_miss_tokens": counts["input_tokens"] - counts["cached_tokens"],
        "completion_tokens_details": {"reasoning_tokens": counts["reasoning_tokens"]},
    }


def _anthropic_usage(counts: dict[str, int]) -> dict[str, Any]:
    # Anthropic's input_tokens excludes the tokens read from and written to the cache.
    return {
        "input_tokens": counts["input_tokens"]
        - counts["cached_tokens"]
        - counts["cache_write_tokens"],
        "cache_creation_input_tokens": counts["cache_write_tokens"],
        "cache_read_input_tokens": counts["cached_tokens"],
        "output_tokens": counts["output_tokens"],
    }


def _gemini_usage(counts: dict[str, int]) -> dict[str, Any]:
    # candidatesTokenCount excludes thinking, reported apart as thoughtsTokenCount.
    visible = counts["output_tokens"] - counts["reasoning_tokens"]
    usage = {
        "promptTokenCount": counts["input_tokens"],
        "candidatesTokenCount": visible,
        "totalTokenCount": counts["input_tokens"] + counts["output_tokens"],
    }
    if counts["cached_tokens"]:
        usage["cachedContentTokenCount"] = counts["cached_tokens"]
    if counts["reasoning_tokens"]:
        usage["thoughtsTokenCount"] = counts["reasoning_tokens"]
    return usage


def _sse(data: Any, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data)
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n"


def _stream_events(
    protocol: str, request: RecordedRequest, script: Script, model: str
) -> Iterator[Any]:
    """The stream as a sequence of: SSE text to send, a float (sleep), or _DROP."""
    tokens = _reply_tokens(script)
    counts = _counts(request, script, len(tokens))
    per_chunk = max(1, script.tokens_per_chunk)
    interval = per_chunk / script.tokens_per_second if script.tokens_per_second else 0.0
    created = int(time.time())
    text_index = 1 if script.thinking else 0

    if protocol == OPENAI:
        yield ": keep-alive\n\n"
        yield _sse(_openai_chunk(model, created, {"role": "assistant", "content": ""}))
        if script.thinking:
            # DeepSeek-style reasoning deltas, which are not part of the answer.
            yield _sse(_openai_chunk(model, created, {"reasoning_content": script.thinking}))
    elif protocol == GEMINI and script.thinking:
        thought = {"parts": [{"text": script.thinking, "thought": True}], "role": "model"}
        yield _sse({"candidates": [{"content": thought, "index": 0}], "modelVersion": model})
    elif protocol == ANTHROPIC:
        start_usage = _anthropic_usage(counts) | {"output_tokens": 1}
        message: dict[str, Any] = {
            "id": "msg_fake01",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if script.include_usage:
            message["usage"] = start_usage
        yield _sse({"type": "message_start", "message": message}, "message_start")
        if script.thinking:
            yield from _anthropic_thinking_block(script.thinking)
        block = {
            "type": "content_block_start",
            "index": text_index,
            "content_block": {"type": "text", "text": ""},
        }
        yield _sse(block, "content_block_start")
        yield _sse({"type": "ping"}, "ping")

    if protocol == GEMINI and script.block_reason:
        feedback = {"promptFeedback": {"blockReason": script.block_reason}}
        yield _sse(feedback | {"usageMetadata": _gemini_usage(counts | {"output_tokens": 0})})
        return
    if script.first_token_delay:
        yield script.first_token_delay
    sent = 0
    for start in range(0, len(tokens), per_chunk):
        if script.drop_after_tokens is not None and sent >= script.drop_after_tokens:
            yield _DROP
            return
        if script.malformed_after_tokens is not None and sent >= script.malformed_after_tokens:
            yield 'data: {"choices": [{"delta": {"content": "unterminated\n\n'
            script = dataclasses.replace(script, malformed_after_tokens=None)
        if script.stream_error is not None and sent >= script.stream_error_after_tokens:
            yield _stream_error(protocol, script.stream_error, model)
            return
        if start and interval:
            yield interval
        piece = "".join(tokens[start : start + per_chunk])
        sent += len(tokens[start : start + per_chunk])
        if protocol == OPENAI:
            yield _sse(_openai_chunk(model, created, {"content": piece}))
        elif protocol == ANTHROPIC:
            delta = {
                "type": "content_block_delta",
                "index": text_index,
                "delta": {"type": "text_delta", "text": piece},
            }
            yield _sse(delta, "content_block_delta")
        else:
            partial = _gemini_usage(counts) | {"candidatesTokenCount": sent}
            yield _sse(_gemini_chunk(model, piece, None, partial if script.include_usage else None))
    if script.drop_after_tokens is not None and sent >= script.drop_after_tokens:
        yield _DROP
        return
    if script.stream_error is not None:
        yield _stream_error(protocol, script.stream_error, model)
        return

    if protocol == OPENAI:
        finish_chunk = _openai_chunk(model, created, {}, script.finish_reason or "stop")
        body = request.body if isinstance(request.body, dict) else {}
        style = script.openai_usage_style
        if script.include_usage and style == "finish_chunk":
            finish_chunk["usage"] = _openai_usage(counts)
        elif script.include_usage and style == "x_groq":
            finish_chunk["x_groq"] = {"id": "req_fake", "usage": _openai_usage(counts)}
        elif script.include_usage and style == "deepseek":
            finish_chunk["usage"] = _deepseek_usage(counts)
        yield _sse(finish_chunk)
        wants_usage_chunk = (body.get("stream_options") or {}).get("include_usage")
        if script.include_usage and style == "usage_chunk" and wants_usage_chunk:
            usage_chunk = _openai_chunk(model, created, None) | {"usage": _openai_usage(counts)}
            yield _sse(usage_chunk)
        yield _sse("[DONE]")
    elif protocol == ANTHROPIC:
        yield _sse({"type": "content_block_stop", "index": text_index}, "content_block_stop")
        message_delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": script.finish_reason or "end_turn", "stop_sequence": None},
        }
        if script.include_usage:
            message_delta["usage"] = {"output_tokens": counts["output_tokens"]}
        yield _sse(message_delta, "message_delta")
        yield _sse({"type": "message_stop"}, "message_stop")
    else:
        usage = _gemini_usage(counts) if script.include_usage else None
        yield _sse(_gemini_chunk(model, "", script.finish_reason or "STOP", usage))


def _anthropic_thinking_block(thinking: str) -> Iterator[str]:
    start = {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}}
    yield _sse(
        start | {"content_block": {"type": "thinking", "thinking": ""}}, "content_block_start"
    )
    delta = {"type": "thinking_delta", "thinking": thinking}
    yield _sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")
    signature = {"type": "signature_delta", "signature": "ZmFrZQ=="}
    yield _sse(
        {"type": "content_block_delta", "index": 0, "delta": signature}, "content_block_delta"
    )
    yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")


def _stream_error(protocol: str, name: str, model: str) -> str:
    _status, body = ERRORS[name].get(protocol) or ERRORS["server_error"][protocol]
    body = _fill_model(body, model)
    if protocol == ANTHROPIC:
        return _sse(body, "error")
    if protocol == OPENAI and isinstance(body, dict):
        # OpenRouter's shape: the error rides on a chunk whose finish_reason is "error".
        chunk = _openai_chunk(model, int(time.time()), {"content": ""}, "error")
        return _sse(chunk | body)
    return _sse(body)


def _openai_chunk(
    model: str, created: int, delta: dict[str, Any] | None, finish: str | None = None
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "chatcmpl-fake01",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": choices,
    }


def _gemini_chunk(
    model: str, text: str, finish: str | None, usage: dict[str, Any] | None
) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    }
    if finish:
        candidate["finishReason"] = finish
    chunk: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": model,
        "responseId": "fake01",
    }
    if usage is not None:
        chunk["usageMetadata"] = usage
    return chunk


def _complete_body(
    protocol: str, request: RecordedRequest, script: Script, model: str
) -> dict[str, Any]:
    tokens = _reply_tokens(script)
    text = "".join(tokens)
    counts = _counts(request, script, len(tokens))
    if protocol == OPENAI:
        return {
            "id": "chatcmpl-fake01",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": script.finish_reason or "stop",
                }
            ],
            "usage": _openai_usage(counts),
        }
    if protocol == ANTHROPIC:
        return {
            "id": "msg_fake01",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": script.finish_reason or "end_turn",
            "stop_sequence": None,
            "usage": _anthropic_usage(counts),
        }
    return _gemini_chunk(model, text, script.finish_reason or "STOP", _gemini_usage(counts))


def _models_body(protocol: str, models: list[str]) -> dict[str, Any]:
    if protocol == ANTHROPIC:
        data = [
            {
                "type": "model",
                "id": model_id,
                "display_name": model_id.replace("-", " ").title(),
                "created_at": "2025-01-01T00:00:00Z",
            }
            for model_id in models
        ]
        return {
            "data": data,
            "has_more": False,
            "first_id": models[0] if models else None,
            "last_id": models[-1] if models else None,
        }
    if protocol == GEMINI:
        return {
            "models": [
                {
                    "name": f"models/{model_id}",
                    "displayName": model_id.replace("-", " ").title(),
                    "supportedGenerationMethods": ["generateContent", "countTokens"],
                }
                for model_id in models
            ]
        }
    return {
        "object": "list",
        "data": [
            {"id": model_id, "object": "model", "created": 1735689600, "owned_by": "fake"}
            for model_id in models
        ],
    }


def _openrouter_key_body(api_key: str | None) -> dict[str, Any]:
    label = f"{api_key[:8]}...{api_key[-3:]}" if api_key and len(api_key) > 12 else "key"
    return {
        "data": {
            "label": label,
            "limit": None,
            "limit_remaining": None,
            "usage": 0.0,
            "is_free_tier": False,
            "rate_limit": {"requests": 50, "interval": "10s"},
        }
    }


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _generic_error(protocol: str, status: int) -> Any:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    if protocol == ANTHROPIC:
        # Anthropic names the type after the status, and uses invalid_request_error for any
        # other 4xx.
        error_type = _ANTHROPIC_TYPES.get(
            status, "invalid_request_error" if status < 500 else "api_error"
        )
        return _anthropic_error(error_type, phrase)
    if protocol == GEMINI:
        return _gemini_error(status, "UNKNOWN", phrase)
    return _openai_error(phrase, "server_error" if status >= 500 else "invalid_request_error", None)


def _with_message(protocol: str, body: Any, message: str) -> Any:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body | {"error": body["error"] | {"message": message}}
    return body


def _fill_model(body: Any, model: str) -> Any:
    if isinstance(body, dict):
        return json.loads(json.dumps(body).replace("{model}", model))
    return body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake LLM provider server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    fake = FakeProvider(args.host, args.port).start()
    print(f"fake provider listening on {fake.url}", flush=True)
    print("control: POST /__fake__/script, GET /__fake__/requests, POST /__fake__/reset")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
