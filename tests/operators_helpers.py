"""Helpers for the operator-site tests: staff in each role, verified sessions, seeded turns."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from accounts.models import User
from ops.roles import OPERATORS, SUPPORT
from tests.conftest import PASSWORD
from tests.security_helpers import allow_code_reuse, code_for, enrol
from usage.models import UsageEvent
from usage.prices import TokenCounts, price_for
from usage.recording import TurnUsage, operator_rollups_record, usage_record


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """The dashboard caches its user counts for a minute; each test starts without."""
    cache.clear()
    yield
    cache.clear()


def make_staff(email: str, *, role: str | None = None, superuser: bool = False) -> User:
    if superuser:
        return User.objects.create_superuser(email=email, password=PASSWORD)
    user = User.objects.create_user(email=email, password=PASSWORD, is_staff=True)
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


def verified_client(user: User, client: Client | None = None) -> Client:
    """A session of `user` that passed the second factor, as staff need for /admin/."""
    client = client or Client()
    client.force_login(user)
    device, _codes = enrol(user)
    allow_code_reuse(device)
    response = client.post(reverse("accounts:two_factor_verify"), {"token": code_for(device)})
    assert response.status_code == 302, response.content[:500]
    return client


def operator_client(email: str = "op@example.com") -> tuple[User, Client]:
    user = make_staff(email, role=OPERATORS)
    return user, verified_client(user)


def support_client(email: str = "support@example.com") -> tuple[User, Client]:
    user = make_staff(email, role=SUPPORT)
    return user, verified_client(user)


def make_turn(
    owner: User,
    *,
    preset: str = "openai",
    model: str = "gpt-4o-mini",
    status: str = "done",
    error_kind: str = "",
    input_tokens: int = 100,
    output_tokens: int = 50,
    ttft_ms: int | None = 300,
    latency_ms: int | None = 1200,
) -> TurnUsage:
    return TurnUsage(
        owner_id=owner.pk,
        message_id=uuid.uuid4(),
        conversation_id=None,
        key_id=None,
        key_label="",
        preset=preset,
        model=model,
        status=status,
        error_kind=error_kind,
        tokens=TokenCounts(input=input_tokens, output=output_tokens),
        reasoning_tokens=0,
        ttft_ms=ttft_ms,
        latency_ms=latency_ms,
        price=price_for(preset, model),
    )


def record_turn(owner: User, **fields: Any) -> UsageEvent:
    """A turn recorded through usage_record, today."""
    turn = make_turn(owner, **fields)
    assert usage_record(turn=turn)  # which also updates the operator rollups
    return UsageEvent.objects.get(message_id=turn.message_id)


def event_on(owner: User, day: date, *, cost_micro: int | None = 1000, **fields: Any) -> UsageEvent:
    """A usage event on another day, written directly, with the operator rollups."""
    turn = make_turn(owner, **fields)
    event = UsageEvent.objects.create(
        owner=owner,
        message_id=turn.message_id,
        day=day,
        preset=turn.preset,
        model=turn.model,
        status=turn.status,
        error_kind=turn.error_kind,
        input_tokens=turn.tokens.input,
        output_tokens=turn.tokens.output,
        cost_micro=cost_micro,
        ttft_ms=turn.ttft_ms,
        latency_ms=turn.latency_ms,
    )
    operator_rollups_record(turn=turn, day=day, cost_micro=cost_micro)
    return event


def figure(html: str, name: str) -> str:
    """The value shown on the dashboard card `data-figure=name`."""
    match = re.search(
        rf'data-figure="{re.escape(name)}".*?<span class="value">(.*?)</span>', html, re.S
    )
    assert match, f"no figure {name}"
    return match.group(1).strip()


def figure_link(html: str, name: str) -> str:
    match = re.search(rf'href="([^"]*)" data-figure="{re.escape(name)}"', html)
    assert match, f"no link for {name}"
    return match.group(1).replace("&amp;", "&")
