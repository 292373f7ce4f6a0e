"""Helpers shared by the key-vault tests."""

from __future__ import annotations

import time

from keys.models import ProviderKey
from keys.services import RequestInfo, provider_key_create

GOOD_SECRET = "sk-test-good-0123456789abcdefWXYZ"


def add_key(owner, fake, *, secret=GOOD_SECRET, label="Fake", preset="custom", **extra):
    base_url = extra.pop("base_url", fake.base_url("openai") if fake is not None else None)
    return provider_key_create(
        owner=owner,
        preset_slug=preset,
        label=label,
        secret=secret,
        base_url=base_url,
        info=RequestInfo(actor=owner, ip_address="127.0.0.1"),
        **extra,
    )


def wait_for_status(
    key: ProviderKey, *, not_status: str = "checking", timeout: float = 15.0
) -> ProviderKey:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        key.refresh_from_db()
        if key.status != not_status:
            return key
        time.sleep(0.05)
    raise AssertionError(f"key stayed {key.status!r} for {timeout}s")
