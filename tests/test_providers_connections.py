"""Connections: one shared client per configuration, explicit limits, nothing from the
environment."""

from __future__ import annotations

import dataclasses

import httpx
import pytest

from providers import ConnectionConfig, close_shared_clients, shared_client
from providers.connections import Deadline
from providers.errors import ProviderError, ProviderErrorKind
from tests.fakes.helpers import FAKE_CONFIG, fake_adapter, point_proxies_nowhere
from tests.fakes.provider import FakeProvider

pytest_plugins = ["tests.fakes.fixtures"]


def test_it_shares_one_client_per_configuration() -> None:
    same = dataclasses.replace(FAKE_CONFIG)
    other = dataclasses.replace(FAKE_CONFIG, read_timeout=99.0)

    assert shared_client(FAKE_CONFIG) is shared_client(same)
    assert shared_client(FAKE_CONFIG) is not shared_client(other)


def test_it_makes_a_fresh_client_after_closing_the_shared_ones() -> None:
    config = ConnectionConfig(user_agent="byok-close-test")
    before = shared_client(config)
    close_shared_clients()
    after = shared_client(config)
    assert after is not before
    assert before.is_closed


def test_the_client_has_explicit_timeouts_and_never_follows_redirects() -> None:
    config = ConnectionConfig(
        connect_timeout=1.5, read_timeout=2.5, write_timeout=3.5, pool_timeout=4.5
    )
    client = shared_client(config)

    assert client.timeout == httpx.Timeout(connect=1.5, read=2.5, write=3.5, pool=4.5)
    assert client.follow_redirects is False
    assert client.trust_env is False


def test_the_client_pool_has_the_configured_limits() -> None:
    config = ConnectionConfig(max_connections=7, max_keepalive_connections=3)
    pool = shared_client(config)._transport._pool  # type: ignore[attr-defined]
    assert (pool._max_connections, pool._max_keepalive_connections) == (7, 3)


def test_it_ignores_proxy_settings_from_the_environment(
    fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_proxies_nowhere(monkeypatch)
    config = dataclasses.replace(FAKE_CONFIG, user_agent="byok-proxy-test")

    fake_adapter(fake_provider, "openai", config=config).verify("sk-test")

    assert fake_provider.requests[0].headers["user-agent"] == "byok-proxy-test"


def test_a_deadline_raises_timeout_once_it_has_passed() -> None:
    Deadline(10).check()
    with pytest.raises(ProviderError) as caught:
        Deadline(-1).check()
    assert caught.value.kind is ProviderErrorKind.TIMEOUT


def test_a_deadline_caps_each_timeout_at_the_time_left() -> None:
    timeout = Deadline(0.5).timeout(ConnectionConfig(read_timeout=60, connect_timeout=0.1))
    assert timeout.read is not None and timeout.read <= 0.5
    assert timeout.connect == 0.1


@pytest.mark.parametrize(
    "bad", [{"read_timeout": 0}, {"call_deadline": -1}, {"max_connections": 0}]
)
def test_it_refuses_a_configuration_without_limits(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ConnectionConfig(**bad)  # type: ignore[arg-type]
