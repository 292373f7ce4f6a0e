"""The preset catalogue: each preset's protocol, base URL rules and key verification."""

from __future__ import annotations

import pytest

from providers import (
    PRESETS,
    ConnectionConfig,
    InvalidEndpoint,
    ProviderError,
    ProviderErrorKind,
    WireProtocol,
    build_adapter,
    canonical_base_url,
    get_preset,
    resolve_base_url,
)
from providers.anthropic_messages import AnthropicMessagesAdapter
from providers.gemini_generate import GeminiAdapter
from providers.openai_chat import OpenAIChatAdapter
from tests.fakes.helpers import fake_adapter
from tests.fakes.provider import FakeProvider

pytest_plugins = ["tests.fakes.fixtures"]

KEY = "sk-catalog-test-key-0004"


def test_the_catalogue_has_the_ten_presets_and_the_local_demo() -> None:
    assert set(PRESETS) == {
        "openai",
        "anthropic",
        "gemini",
        "openrouter",
        "groq",
        "mistral",
        "deepseek",
        "together",
        "ollama",
        "demo",
        "custom",
    }


@pytest.mark.parametrize("preset", [p for p in PRESETS.values() if p.slug != "custom"])
def test_each_preset_has_a_canonical_base_url_and_popular_models(preset: object) -> None:
    assert preset.default_base_url == canonical_base_url(preset.default_base_url)  # type: ignore[attr-defined]
    assert preset.popular_models  # type: ignore[attr-defined]
    assert preset.name  # type: ignore[attr-defined]


def test_hosted_presets_use_https_and_only_ollama_and_the_demo_are_local() -> None:
    for preset in PRESETS.values():
        if preset.local:
            assert preset.slug in {"ollama", "demo"}
        elif preset.default_base_url is not None:
            assert preset.default_base_url.startswith("https://")


@pytest.mark.parametrize(
    ("slug", "adapter_type"),
    [
        ("openai", OpenAIChatAdapter),
        ("anthropic", AnthropicMessagesAdapter),
        ("gemini", GeminiAdapter),
        ("openrouter", OpenAIChatAdapter),
        ("ollama", OpenAIChatAdapter),
    ],
)
def test_it_builds_the_adapter_for_each_presets_protocol(slug: str, adapter_type: type) -> None:
    adapter = build_adapter(get_preset(slug), config=ConnectionConfig())
    assert isinstance(adapter, adapter_type)
    assert get_preset(slug).protocol in set(WireProtocol)


VERIFY_PATHS = {
    "openai": "/v1/models",
    "anthropic": "/v1/models",
    "gemini": "/v1beta/models",
    "openrouter": "/api/v1/key",
    "groq": "/openai/v1/models",
    "mistral": "/v1/models",
    "deepseek": "/models",
    "together": "/v1/models",
    "ollama": "/v1/models",
    "demo": "/v1/models",
    "custom": "/v1/models",
}


@pytest.mark.parametrize("slug", sorted(PRESETS))
def test_each_preset_verifies_a_key_with_a_request_that_carries_it(
    fake_provider: FakeProvider, slug: str
) -> None:
    fake_adapter(fake_provider, slug).verify(KEY)

    [sent] = fake_provider.requests
    assert (sent.method, sent.path) == ("GET", VERIFY_PATHS[slug])
    assert sent.api_key == KEY


@pytest.mark.parametrize("slug", sorted(PRESETS))
def test_each_preset_reports_a_rejected_key_as_invalid_key(
    fake_provider: FakeProvider, slug: str
) -> None:
    fake_provider.accept_only_keys("some-other-key")

    with pytest.raises(ProviderError) as caught:
        fake_adapter(fake_provider, slug).verify(KEY)

    assert caught.value.kind is ProviderErrorKind.INVALID_KEY
    assert not caught.value.retryable


def test_openrouter_verification_does_not_use_the_public_model_list(
    fake_provider: FakeProvider,
) -> None:
    fake_adapter(fake_provider, "openrouter").verify(KEY)
    assert [r.path for r in fake_provider.requests] == ["/api/v1/key"]


def test_it_resolves_a_presets_default_base_url() -> None:
    assert resolve_base_url(get_preset("openai")) == "https://api.openai.com/v1"
    assert resolve_base_url(get_preset("openai"), "HTTPS://API.OPENAI.COM:443/v1/") == (
        "https://api.openai.com/v1"
    )


def test_it_refuses_to_point_a_fixed_preset_elsewhere() -> None:
    with pytest.raises(InvalidEndpoint, match="Custom"):
        resolve_base_url(get_preset("openai"), "https://evil.example/v1")


def test_it_lets_custom_and_ollama_presets_choose_their_url() -> None:
    assert resolve_base_url(get_preset("custom"), "https://llm.example.com/v1/") == (
        "https://llm.example.com/v1"
    )
    assert resolve_base_url(get_preset("ollama"), "http://gpu-box:11434/v1") == (
        "http://gpu-box:11434/v1"
    )


def test_a_custom_preset_needs_a_base_url() -> None:
    with pytest.raises(InvalidEndpoint):
        resolve_base_url(get_preset("custom"))


def test_ollama_is_refused_where_private_endpoints_are_not_allowed() -> None:
    adapter = build_adapter(get_preset("ollama"), config=ConnectionConfig())
    with pytest.raises(InvalidEndpoint):
        adapter.verify("")
