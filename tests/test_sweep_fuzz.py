"""Every form and JSON endpoint, fed junk by hypothesis: never a 500.

Junk: huge, empty, wrong type, odd Unicode, NUL bytes, repeated fields, JSON bodies. Alice
posts it to her own objects (the paths where real work happens). The operator site is
Django's own admin and is swept for access in test_sweep_urls instead.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.sweep_registry import rule_for
from tests.test_sweep_urls import ROUTES, not_a_crash, url_of, world_fixture  # noqa: F401

pytestmark = pytest.mark.django_db

FIELDS = [
    "username",
    "password",
    "email",
    "password1",
    "password2",
    "old_password",
    "new_password1",
    "new_password2",
    "display_name",
    "token",
    "confirmation",
    "label",
    "secret",
    "base_url",
    "preset",
    "expires_on",
    "text",
    "title",
    "system_prompt",
    "model",
    "key",
    "temporary",
    "archived",
    "category",
    "since",
    "until",
    "page",
    "next",
    "q",
    "limit",
    "amount",
    "dollars",
    "scope",
    "start",
    "end",
    "timezone",
]

junk_text = st.one_of(
    st.just(""),
    st.just("\x00"),
    st.just("a\x00b"),
    st.just("x" * 200_000),
    st.just("🔑" * 5000),
    st.just("‮\u202egnp.exe"),
    st.just("-1"),
    st.just("1e309"),
    st.just("99999999999999999999999"),
    st.just("2026-02-30"),
    st.just("../../etc/passwd"),
    st.just("<script>alert(1)</script>"),
    st.just("https://evil.example/"),
    st.just("00000000-0000-0000-0000-000000000000"),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=40),
)
junk_form = st.dictionaries(
    st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)),
    st.one_of(junk_text, st.lists(junk_text, max_size=3)),
    max_size=8,
)
junk_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | junk_text,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS), children, max_size=4)
    ),
    max_leaves=10,
)

FUZZED = [r for r in ROUTES if not r.name.startswith("admin") and rule_for(r.name)]


@pytest.fixture
def alice_session(alice):
    client = Client()
    client.force_login(alice)
    return client


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(form=junk_form, body=junk_json, query=junk_form)
def test_junk_never_crashes_a_form_or_json_endpoint(alice, alice_session, world, form, body, query):
    for route in FUZZED:
        if route.name in ("accounts:logout", "privacy:delete"):
            continue  # they end the session under test; swept as bob in test_sweep_urls
        url = url_of(route, world)
        client = alice_session
        if "_auth_user_id" not in client.session:
            client.force_login(alice)
        responses = [
            client.post(url, form),
            client.post(url, json.dumps(body), content_type="application/json"),
            client.get(url, query),
        ]
        for response in responses:
            assert not_a_crash(response, route), (route.name, response.status_code)
