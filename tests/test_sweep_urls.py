"""The privacy sweep: every URL pattern, as a visitor and as bob holding alice's ids.

Any page, fragment, SSE stream, CSV or download that shows alice's data to someone else
fails here, and so does a URL pattern that nobody gave an access rule (sweep_registry).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.models import UserSession
from chat.models import Message
from keys.models import ProviderKey
from privacy.models import AccountExport
from tests.conftest import PASSWORD
from tests.keys_helpers import add_key
from tests.security_helpers import make_conversation
from tests.sweep_registry import LOGIN, OWNER, STAFF, rule_for

pytestmark = pytest.mark.django_db

MARKERS = ("ALICE-KEY-LABEL", "ALICE-TITLE", "ALICE-MESSAGE", "ALICE-DISPLAY", "alice@example")


@dataclass(frozen=True)
class Route:
    name: str  # "ns:name", or "ns:<route>" for an unnamed pattern
    route: str
    params: tuple[str, ...]
    named: bool = True


def _params(pattern: URLPattern | URLResolver) -> tuple[str, ...]:
    inner = pattern.pattern
    converters = getattr(inner, "converters", None)
    if converters:
        return tuple(converters)
    return tuple(inner.regex.groupindex)


def walk(patterns=None, namespace: str = "", prefix: str = "", params=()) -> Iterator[Route]:
    for pattern in patterns if patterns is not None else get_resolver().url_patterns:
        route = prefix + str(pattern.pattern)
        these = params + _params(pattern)
        if isinstance(pattern, URLResolver):
            inner_ns = ":".join(filter(None, [namespace, pattern.namespace or ""]))
            yield from walk(pattern.url_patterns, inner_ns, route, these)
        else:
            label = pattern.name or f"<{route}>"
            name = ":".join(filter(None, [namespace, label]))
            yield Route(name, route, these, named=pattern.name is not None)


def all_routes() -> list[Route]:
    return list(walk())


def test_every_url_pattern_has_an_access_rule():
    missing = sorted({r.name for r in all_routes() if rule_for(r.name) is None})
    assert not missing, (
        f"URL patterns without an access rule: {missing}. Add each to "
        "tests/sweep_registry.py with who may reach it."
    )


def test_the_registry_names_no_url_that_is_gone():
    from tests.sweep_registry import URL_RULES

    names = {r.name for r in all_routes()}
    assert not sorted(set(URL_RULES) - names)


@pytest.fixture(name="world")
def world_fixture(alice, bob):
    """Alice owns one of everything, marked so a leak is recognisable."""
    alice.display_name = "ALICE-DISPLAY"
    alice.save(update_fields=["display_name"])
    key = add_key(alice, None, preset="openai", label="ALICE-KEY-LABEL")
    conversation = make_conversation(alice, key, "ALICE-MESSAGE text", title="ALICE-TITLE")
    reply = Message.objects.get(conversation=conversation, role="assistant")
    alices_browser = Client()
    alices_browser.post(reverse("accounts:login"), {"username": alice.email, "password": PASSWORD})
    session = UserSession.objects.filter(owner=alice).order_by("-created_at").first()
    assert session is not None
    from django.test import RequestFactory

    from privacy import exports

    export = exports.account_export_request(user=alice, request=RequestFactory().post("/"))
    exports.account_export_build(export_id=str(export.pk))
    return {
        "key_id": key.pk,
        "conversation_id": conversation.pk,
        "message_id": reply.pk,
        "session_id": session.pk,
        "export_id": export.pk,
        "direction": "up",
        "uidb64": "MQ",
        "token": "set-password",
        "day": date.today().isoformat(),
        "scope": str(key.pk),
        # admin
        "object_id": str(alice.pk),
        "id": str(alice.pk),
        "app_label": "accounts",
        "content_type_id": "1",
        "url": "x",
    }


def url_kwargs(route: Route, world: dict[str, object]) -> dict[str, object]:
    missing = [p for p in route.params if p not in world]
    assert not missing, f"{route.name}: teach url_kwargs about {missing}"
    return {p: world[p] for p in route.params}


def url_of(route: Route, world) -> str:
    kwargs = url_kwargs(route, world)
    if not route.named:
        # Unnamed (the admin's redirects and catch-all): fill the pattern by hand.
        path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: str(kwargs[m.group(1)]), route.route)
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(kwargs[m.group(1)]), path)
        return "/" + path.replace("^", "").replace("$", "").replace("\\", "")
    return reverse(route.name, kwargs=kwargs)


def body_of(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


def not_a_crash(response, route: Route) -> bool:
    # /healthz answers 503 on purpose when no worker runs (as here).
    return response.status_code < 500 or (route.name == "healthz" and response.status_code == 503)


def goes_to_login(response, route: Route) -> bool:
    if response.status_code != 302:
        return False
    if route.name.endswith("logout"):  # logging out a visitor just goes home
        return response["Location"] in ("/", "/admin/")
    return response["Location"].startswith(("/accounts/login/", "/admin/login/"))


ROUTES = [r for r in all_routes() if rule_for(r.name) is not None]


def visitor_problems(client: Client, world, route: Route) -> list[str]:
    url = url_of(route, world)
    rule = rule_for(route.name)
    problems = []
    for method in ("get", "post"):
        response = getattr(client, method)(url)
        where = f"{method.upper()} {url} as a visitor"
        if not not_a_crash(response, route):
            problems.append(f"{where}: {response.status_code}")
        elif rule in (LOGIN, OWNER, STAFF) and not (
            goes_to_login(response, route) or response.status_code == 405
        ):
            problems.append(f"{where}: {response.status_code}, not sent to log in")
        problems += leaks(response, where)
    return problems


def bob_problems(client: Client, bob, world, route: Route) -> list[str]:
    url = url_of(route, world)
    rule = rule_for(route.name)
    problems = []
    for method in ("get", "post"):
        if "_auth_user_id" not in client.session:  # bob may have logged himself out
            client.force_login(bob)
        response = getattr(client, method)(url)
        where = f"{method.upper()} {url} as bob"
        status = response.status_code
        if not not_a_crash(response, route):
            problems.append(f"{where}: {status}")
        elif rule == OWNER and status not in (404, 405):
            problems.append(f"{where}: {status}, expected 404")
        elif rule == STAFF:
            # Non-staff go to the admin's log-in, which refuses them (403), or get 403/405.
            location = response.get("Location", "")
            if status not in (302, 403, 405) or (
                status == 302
                and not location.startswith("/admin/login/")
                and not (route.name.endswith("logout") and location == "/admin/")
            ):
                problems.append(f"{where}: {status} {location}")
        problems += leaks(response, where)
    return problems


def leaks(response, where: str) -> list[str]:
    text = body_of(response) + "".join(f"{k}: {v}" for k, v in response.items())
    return [f"{where} leaks {marker!r}" for marker in MARKERS if marker in text]


def test_a_visitor_never_sees_a_users_data(client, world):
    problems = [p for route in ROUTES for p in visitor_problems(client, world, route)]
    assert not problems, "\n".join(problems)


def test_bob_holding_alices_ids_never_sees_her_data(client, bob, world):
    problems = [p for route in ROUTES for p in bob_problems(client, bob, world, route)]
    assert not problems, "\n".join(problems)
    assert_alices_things_are_intact(world)


def assert_alices_things_are_intact(world) -> None:
    key = ProviderKey.objects.get(pk=world["key_id"])
    assert key.label == "ALICE-KEY-LABEL" and key.status != "revoked"
    assert Message.objects.filter(pk=world["message_id"]).exists()
    assert UserSession.objects.filter(pk=world["session_id"]).exists()
    assert AccountExport.objects.get(pk=world["export_id"]).status == "ready"


def test_the_sweep_covers_the_kinds_of_response_that_could_leak():
    names = {r.name for r in ROUTES}
    for expected in ("chat:stream", "keys:status", "privacy:export_download", "usage:export"):
        assert expected in names


def test_alice_herself_gets_her_pages(world, alice):
    """The sweep's ids are real: the owner reaches the same URLs."""
    client = Client()
    client.force_login(alice)
    for name in ("keys:detail", "chat:conversation", "privacy:export_status"):
        route = next(r for r in ROUTES if r.name == name)
        response = client.get(url_of(route, world))
        assert response.status_code == 200, name


def test_the_sweeps_catch_an_unregistered_or_leaky_url(settings, client, bob, world):
    """The sweep's own test: a new URL without a rule, and a page that leaks, both fail."""
    settings.ROOT_URLCONF = "tests.sweep_leaky_urls"
    leak = next(r for r in all_routes() if r.name == "leak")
    assert rule_for(leak.name) is None  # test_every_url_pattern_has_an_access_rule fails
    assert any("leaks 'ALICE-DISPLAY'" in p for p in bob_problems(client, bob, world, leak))
