"""Pytest fixtures for the fake provider.

Load them from tests/conftest.py with `pytest_plugins = ["tests.fakes.fixtures"]` (or import
`fake_provider_server` and `fake_provider` from here). One server runs for the whole session;
`fake_provider` hands it to a test with no scripts, records or key restrictions left over.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.provider import FakeProvider


@pytest.fixture(scope="session")
def fake_provider_server() -> Iterator[FakeProvider]:
    """The session's fake provider server, on 127.0.0.1 and a free port."""
    with FakeProvider("127.0.0.1", 0) as fake:
        yield fake


@pytest.fixture
def fake_provider(fake_provider_server: FakeProvider) -> Iterator[FakeProvider]:
    """The fake provider, reset before and after the test."""
    fake_provider_server.reset()
    yield fake_provider_server
    fake_provider_server.reset()
