"""The client address the lock-out counts is the app's own reading (`client_ip`), never one
uvicorn rewrote from X-Forwarded-For: every web command runs it with --no-proxy-headers."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import httpx
import pytest
import yaml
from axes.models import AccessAttempt
from django.urls import reverse
from uvicorn.main import main as uvicorn_cli

from tests.conftest import PASSWORD, serve_asgi

ROOT = Path(__file__).resolve().parent.parent
LOGIN = reverse("accounts:login")


def procfile_web() -> list[str]:
    line = next(
        line.split(":", 1)[1]
        for line in (ROOT / "Procfile.dev").read_text().splitlines()
        if line.startswith("web:")
    )
    return shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", line))  # ${BYOK_PORT:-8000}


def dockerfile_cmd() -> list[str]:
    found = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert found
    return list(json.loads(found.group(1)))


def compose_web() -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return list(compose["services"]["web"]["command"])


WEB_COMMANDS = {"Procfile.dev": procfile_web, "Dockerfile": dockerfile_cmd, "compose": compose_web}


def client_address_options(argv: list[str]) -> dict[str, object]:
    """What the command's uvicorn options say about the client address, read by uvicorn's
    own command line parser, as uvicorn.Config arguments."""
    assert argv[0] == "uvicorn", argv
    params = uvicorn_cli.make_context("uvicorn", argv[1:]).params
    return {
        "proxy_headers": params["proxy_headers"],
        "forwarded_allow_ips": params["forwarded_allow_ips"],
    }


@pytest.mark.parametrize("source", WEB_COMMANDS)
def test_every_web_command_runs_uvicorn_without_proxy_headers(source):
    argv = WEB_COMMANDS[source]()
    assert "--no-proxy-headers" in argv
    assert "--proxy-headers" not in argv
    assert client_address_options(argv)["proxy_headers"] is False


def login(client: httpx.Client, email: str, password: str, forwarded_for: str | None) -> int:
    page = client.get(LOGIN)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = client.post(
        LOGIN,
        data={"username": email, "password": password, "csrfmiddlewaretoken": token.group(1)},
        headers=headers,
    )
    return response.status_code


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("source", WEB_COMMANDS)
def test_a_forged_forwarded_for_neither_lifts_nor_resets_a_lock_out_through_uvicorn(source, alice):
    options = client_address_options(WEB_COMMANDS[source]())
    with serve_asgi(**options) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        # An attacker on loopback spreads five guesses over five forged addresses.
        guesses = [
            login(client, f"nobody{n}@example.com", "wrong!", f"192.0.2.{n}") for n in range(5)
        ]
        assert guesses == [200, 200, 200, 200, 429]  # the fifth failure locks the address
        # The address is locked: a sixth forged one does not get in, even as alice...
        assert login(client, alice.email, PASSWORD, "198.51.100.9") == 429
        # ...nor does it reset the lock-out for the real address.
        assert login(client, alice.email, PASSWORD, None) == 429
    addresses = set(AccessAttempt.objects.values_list("ip_address", flat=True))
    assert addresses == {"127.0.0.1"}
