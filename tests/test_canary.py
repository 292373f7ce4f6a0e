"""Plant a canary provider key, use it, and search every store for it.

It may appear in exactly one place: the request the fake provider received.
"""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from celery.signals import before_task_publish
from django.core.management import call_command
from django.urls import reverse

from accounts.models import User
from keys.models import ProviderKey
from tests.conftest import PASSWORD
from tests.keys_helpers import wait_for_status
from tests.stores import database_rows_containing, redis_entries_containing

pytestmark = pytest.mark.django_db(transaction=True)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(
            f"{record.name} {record.getMessage()} {record.args!r} {record.exc_text or ''}"
        )
        if record.exc_info:
            self.lines.append(logging.Formatter().formatException(record.exc_info))


@pytest.fixture
def debug_logs():
    handler = _Collect()
    root = logging.getLogger()
    names = [
        "",
        "aiohttp",
        "asyncio",
        "celery",
        "kombu",
        "django",
        "vault",
        "keys",
        "completion",
        "providers",
    ]
    previous = {name: logging.getLogger(name).level for name in names}
    root.addHandler(handler)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for name, level in previous.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def task_messages():
    bodies: list[str] = []

    def record(sender=None, body=None, headers=None, **kwargs):
        bodies.append(json.dumps([sender, body, headers], default=repr))

    before_task_publish.connect(record, weak=False)
    yield bodies
    before_task_publish.disconnect(record)


def test_a_canary_key_is_found_only_in_the_request_the_provider_received(
    client, fake_provider, celery_worker, debug_logs, task_messages, capsys
):
    canary = f"sk-canary-{uuid.uuid4().hex}"
    fake_provider.accept_only_keys(canary)
    user = User.objects.create_user(email="canary@example.com", password=PASSWORD)
    operator = User.objects.create_superuser(email="op@example.com", password=PASSWORD)
    client.force_login(user)
    pages: list[str] = []

    def visit(response):
        pages.append(response.content.decode(errors="replace") + json.dumps(dict(response.headers)))
        return response

    visit(client.get(reverse("keys:add")))
    response = visit(
        client.post(
            reverse("keys:add"),
            {
                "preset": "custom",
                "label": "Canary",
                "secret": canary,
                "base_url": fake_provider.base_url("openai"),
            },
        )
    )
    assert response.status_code == 302
    key = wait_for_status(ProviderKey.objects.get(owner=user))
    assert key.status == "valid", key.status_reason

    # Everything else that touches keys: a failed save that re-renders the form, a
    # re-check, the pages, a replace with the same canary, the admin, the vault commands.
    visit(
        client.post(
            reverse("keys:add"),
            {"preset": "custom", "label": "Canary", "secret": canary, "base_url": "x"},
        )
    )
    visit(client.post(reverse("keys:verify", args=[key.pk])))
    wait_for_status(key)
    for name in (
        "keys:list",
        "keys:detail",
        "keys:status",
        "keys:replace",
        "keys:revoke",
        "keys:delete",
    ):
        url = reverse(name) if name == "keys:list" else reverse(name, args=[key.pk])
        visit(client.get(url))
    visit(client.post(reverse("keys:replace", args=[key.pk]), {"secret": canary}))
    wait_for_status(key)
    from tests.security_helpers import allow_code_reuse, code_for, enrol

    device, _ = enrol(operator)
    allow_code_reuse(device)
    client.force_login(operator)
    client.post(
        reverse("accounts:two_factor_verify") + "?next=/admin/", {"token": code_for(device)}
    )
    for url in (
        "/admin/",
        "/admin/keys/providerkey/",
        f"/admin/keys/providerkey/{key.pk}/change/",
        "/admin/accounts/auditevent/",
        "/admin/vault/datakey/",
    ):
        assert visit(client.get(url)).status_code == 200, url
    call_command("vault_check")
    call_command("rotate_master_key")
    command_output = capsys.readouterr()

    # Three checks (save, re-check, replace), each a verify call and a model listing.
    received = [request.api_key for request in fake_provider.requests]
    assert len(received) >= 3
    assert set(received) == {canary}
    assert database_rows_containing(canary) == []
    assert redis_entries_containing(canary) == []
    assert [line for line in debug_logs.lines if canary in line] == []
    # DEBUG logging was on where the key is opened and sent.
    assert any(line.startswith("keys.services") for line in debug_logs.lines)
    assert task_messages and [body for body in task_messages if canary in body] == []
    assert [page[:200] for page in pages if canary in page] == []
    assert canary not in command_output.out + command_output.err
