"""Provider adapters: pure Python, no Django.

Typical use (in the worker, with the key just opened from the vault)::

    adapter = build_adapter(get_preset("anthropic"), config=config, base_url=key_base_url)
    for event in adapter.stream_chat(ChatRequest(model=..., messages=..., api_key=...)):
        ...  # TextDelta*, then Usage?, then Finish; ProviderError on failure

On an event loop (the worker's relay loop, `providers.loop`), `async for event in
adapter.astream_chat(request)` gives the same events and errors (aiohttp, `providers.aio`).

See types.py for the event contract, errors.py for the error taxonomy, netguard.py for the
rules on base URLs.
"""

from providers.anthropic_messages import AnthropicMessagesAdapter
from providers.catalog import (
    PRESETS,
    Preset,
    WireProtocol,
    build_adapter,
    get_preset,
    resolve_base_url,
)
from providers.connections import ConnectionConfig, close_shared_clients, shared_client
from providers.errors import (
    InvalidChatRequest,
    InvalidEndpoint,
    ProviderError,
    ProviderErrorKind,
)
from providers.gemini_generate import GeminiAdapter
from providers.netguard import (
    BlockedEndpoint,
    GuardedNetworkBackend,
    canonical_base_url,
    check_endpoint,
    system_resolver,
)
from providers.openai_chat import OpenAIChatAdapter
from providers.types import (
    ChatAdapter,
    ChatEvent,
    ChatMessage,
    ChatRequest,
    Finish,
    FinishReason,
    ModelInfo,
    Role,
    TextDelta,
    Usage,
)

__all__ = [
    "PRESETS",
    "AnthropicMessagesAdapter",
    "BlockedEndpoint",
    "ChatAdapter",
    "ChatEvent",
    "ChatMessage",
    "ChatRequest",
    "ConnectionConfig",
    "Finish",
    "FinishReason",
    "GeminiAdapter",
    "GuardedNetworkBackend",
    "InvalidChatRequest",
    "InvalidEndpoint",
    "ModelInfo",
    "OpenAIChatAdapter",
    "Preset",
    "ProviderError",
    "ProviderErrorKind",
    "Role",
    "TextDelta",
    "Usage",
    "WireProtocol",
    "build_adapter",
    "canonical_base_url",
    "check_endpoint",
    "close_shared_clients",
    "get_preset",
    "resolve_base_url",
    "shared_client",
    "system_resolver",
]
