"""Provider adapters: pure Python, no Django.

Typical use (in the worker, with the key just opened from the vault, on the process's relay
loop `providers.loop`)::

    adapter = build_adapter(get_preset("anthropic"), config=config, base_url=key_base_url)
    async for event in adapter.astream_chat(ChatRequest(model=..., messages=..., api_key=...)):
        ...  # TextDelta*, then Usage?, then Finish; ProviderError on failure

`adapter.verify(key)` and `adapter.list_models(key)` block their thread while the relay loop
makes the request. Every request goes through the one HTTP client (`providers.aio`) and the
network guard (`providers.netguard`).

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
from providers.connections import ConnectionConfig
from providers.errors import (
    InvalidChatRequest,
    InvalidEndpoint,
    ProviderError,
    ProviderErrorKind,
)
from providers.gemini_generate import GeminiAdapter
from providers.netguard import (
    BlockedEndpoint,
    GuardedResolver,
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
    "GuardedResolver",
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
    "get_preset",
    "resolve_base_url",
    "system_resolver",
]
