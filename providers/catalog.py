"""The preset catalogue: the providers a user can pick, and how to talk to each.

A preset names a wire protocol, a default base URL, how a key is verified (with a request that
really needs the key) and a few popular model ids to suggest; the provider's own model list
(`list_models`) is the authority on what a key can use. Base URLs follow each vendor's own
SDK convention: OpenAI-compatible ones end in the version (`.../v1`), Anthropic's is the bare
host, Gemini's ends in `/v1beta`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from providers.anthropic_messages import AnthropicMessagesAdapter
from providers.connections import ConnectionConfig
from providers.errors import InvalidEndpoint
from providers.gemini_generate import GeminiAdapter
from providers.netguard import canonical_base_url
from providers.openai_chat import OpenAIChatAdapter
from providers.reasoning import (
    Generation,
    ReasoningStyle,
    generation_for,
    reasoning_style,
    takes_prefill,
)
from providers.reasoning import takes_temperature as protocol_takes_temperature
from providers.types import ChatAdapter


class WireProtocol(StrEnum):
    OPENAI_CHAT = "openai_chat"
    ANTHROPIC_MESSAGES = "anthropic_messages"
    GEMINI = "gemini"


@dataclass(frozen=True, slots=True)
class Preset:
    """One selectable provider.

    `default_base_url` None means the user must give one (custom). `base_url_editable` lets a
    user point a preset elsewhere (a proxy, another Ollama host). `verify_path` is the GET
    `verify` sends for OpenAI-protocol presets. `local` presets run on the user's own machine
    and are only reachable where private endpoints are allowed.
    """

    slug: str
    name: str
    protocol: WireProtocol
    default_base_url: str | None
    popular_models: tuple[str, ...]
    key_required: bool = True
    base_url_editable: bool = False
    local: bool = False
    verify_path: str = "/models"
    max_tokens_field: str = "max_tokens"
    request_stream_usage: bool = True


_PRESET_LIST = (
    Preset(
        slug="openai",
        name="OpenAI",
        protocol=WireProtocol.OPENAI_CHAT,
        default_base_url="https://api.openai.com/v1",
        popular_models=("gpt-5.4", "gpt-5.4-mini", "gpt-5-mini", "gpt-4.1", "gpt-4o-mini"),
        max_tokens_field="max_completion_tokens",
    ),
    Preset(
        slug="anthropic",
        name="Anthropic",
        protocol=WireProtocol.ANTHROPIC_MESSAGES,
        default_base_url="https://api.anthropic.com",
        popular_models=("claude-opus-4-7", "claude-sonnet-4-6", "claude-haiku-4-5"),
    ),
    Preset(
        slug="gemini",
        name="Google Gemini",
        protocol=WireProtocol.GEMINI,
        default_base_url="https://generativelanguage.googleapis.com/v1beta",
        popular_models=("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"),
    ),
    Preset(
        slug="openrouter",
        name="OpenRouter",
        protocol=WireProtocol.OPENAI_CHAT,
        default_base_url="https://openrouter.ai/api/v1",
        popular_models=(
            "openai/gpt-5-mini",
            "anthropic/claude-sonnet-4.6",
            "google/gemini-2.5-flash",
            "meta-llama/llama-3.3-70b-instruct",
        ),
        # OpenRouter's model list is public; GET /key fails without a valid key.
        verify_path="/key",
    ),
    Preset(
        slug="groq",
        name="Groq",
        protocol=WireProtocol.OPENAI_CHAT,
        default_base_url="https://api.groq.com/openai/v1",
        popular_models=("llama-3.3-70b-versatile", "llama-3.1-8b-instant", "openai/gpt-oss-120b"),
    ),
    Preset(
        slug="mistral",
        name="Mistral",
        protocol=WireProtocol.OPENAI_CHAT,
        default_base_url="https://api.mistral.ai/v1",
        popular_models=("mistral-large-latest", "mistral-medium-latest", "mistral-small-latest"),
        # Mistral reports usage on its last chunk without being asked, so the OpenAI-specific
        # stream_options is left out rather than relying on it ignoring unknown fields.
        request_stream_usage=False,
    ),
    Preset(
        slug="deepseek",
        name="DeepSeek",
        protocol=WireProtocol.OPENAI_CHAT,
        default_base_url="https://api.deepseek.com",
        popular_models=("deepseek-chat", "deepseek-reasoner"),
    ),
    Preset(
        slug="together",
        name="Together AI",
        protocol=WireProtocol.OPENAI_CHAT,
        default_base_url="https://api.together.xyz/v1",
        popular_models=(
            "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "deepseek-ai/DeepSeek-V3",
            "Qwen/Qwen2.5-72B-Instruct-Turbo",
        ),
    ),
    Preset(
        slug="ollama",
        name="Ollama (local)",
        protocol=WireProtocol.OPENAI_CHAT,
        default_base_url="http://localhost:11434/v1",
        popular_models=("llama3.2", "qwen2.5", "mistral"),
        key_required=False,
        base_url_editable=True,
        local=True,
    ),
    Preset(
        slug="demo",
        name="Demo (local, development only)",
        protocol=WireProtocol.OPENAI_CHAT,
        # Started by `make run` (byok_site.demo_provider); never reachable in production,
        # where private endpoints are refused and the preset is hidden.
        default_base_url="http://127.0.0.1:8765/v1",
        popular_models=("byok-demo", "byok-demo-slow"),
        key_required=False,
        local=True,
    ),
    Preset(
        slug="custom",
        name="Custom OpenAI-compatible",
        protocol=WireProtocol.OPENAI_CHAT,
        default_base_url=None,
        popular_models=(),
        key_required=False,
        base_url_editable=True,
    ),
)

PRESETS: Mapping[str, Preset] = MappingProxyType({preset.slug: preset for preset in _PRESET_LIST})


def get_preset(slug: str) -> Preset:
    """The preset called `slug`; `KeyError` if there is none."""
    return PRESETS[slug]


def resolve_base_url(preset: Preset, base_url: str | None = None) -> str:
    """The canonical base URL a key for `preset` is bound to.

    The preset's default unless the preset lets users choose (custom, Ollama) and one was
    given. Raises `InvalidEndpoint` for a missing or malformed URL, or an attempt to move a
    fixed preset elsewhere: a key for "OpenAI" only ever goes to OpenAI.
    """
    if base_url is None or not base_url.strip():
        if preset.default_base_url is None:
            raise InvalidEndpoint("Enter the provider's base URL, like https://api.example.com/v1.")
        return canonical_base_url(preset.default_base_url)
    canonical = canonical_base_url(base_url)
    if not preset.base_url_editable and (
        preset.default_base_url is None or canonical != canonical_base_url(preset.default_base_url)
    ):
        raise InvalidEndpoint(
            f"{preset.name} always uses {preset.default_base_url}; pick “Custom” for another URL."
        )
    return canonical


def build_adapter(
    preset: Preset, *, config: ConnectionConfig, base_url: str | None = None
) -> ChatAdapter:
    """An adapter for `preset`'s protocol and options at `base_url`, using `config`.

    Pass the base URL the key is bound to (the one `resolve_base_url` returned when the key
    was saved); None means the preset's default. It is not re-checked against the preset
    here, so a stored key keeps working if a preset's default URL changes later; every call
    still goes through the network guard.
    """
    url = resolve_base_url(preset) if base_url is None else canonical_base_url(base_url)
    if preset.protocol is WireProtocol.ANTHROPIC_MESSAGES:
        return AnthropicMessagesAdapter(base_url=url, config=config)
    if preset.protocol is WireProtocol.GEMINI:
        return GeminiAdapter(base_url=url, config=config)
    return OpenAIChatAdapter(
        base_url=url,
        config=config,
        verify_path=preset.verify_path,
        max_tokens_field=preset.max_tokens_field,
        request_stream_usage=preset.request_stream_usage,
    )


def model_reasoning(preset: Preset, model: str) -> ReasoningStyle:
    """How `model` at `preset` takes a reasoning effort (`providers.reasoning`'s rule);
    NONE when it has no effort setting."""
    return reasoning_style(preset.protocol.value, model)


def model_takes_temperature(preset: Preset, model: str) -> bool:
    """False for the models that only accept their default temperature."""
    return protocol_takes_temperature(preset.protocol.value, model)


def model_takes_prefill(preset: Preset, model: str, effort: str | None) -> bool:
    """Whether a request to `model` at `preset` may end with the assistant's partial reply
    for the model to continue (`providers.reasoning.takes_prefill`)."""
    return takes_prefill(preset.protocol.value, model, effort)


def model_generation(
    preset: Preset,
    model: str,
    *,
    max_tokens: int,
    temperature: float | None,
    effort: str | None,
) -> Generation:
    """What a request to `model` at `preset` is sent for these settings: the adapters build
    their bodies from the same rule, so this is what the provider got."""
    return generation_for(
        preset.protocol.value,
        model,
        max_tokens=max_tokens,
        temperature=temperature,
        effort=effort,
    )
