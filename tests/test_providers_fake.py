"""The fake provider itself: scriptable over HTTP, recording what it got, runnable alone."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from providers import ChatMessage, ChatRequest, Role
from tests.fakes.helpers import fake_adapter, stream
from tests.fakes.provider import DEFAULT_REPLY, FakeProvider

pytest_plugins = ["tests.fakes.fixtures"]

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-fake-control-0006"


def chat_request() -> ChatRequest:
    return ChatRequest(model="m", messages=[ChatMessage(Role.USER, "hi")], api_key=KEY)


def test_it_takes_scripts_over_http_for_other_processes(fake_provider: FakeProvider) -> None:
    answer = httpx.post(
        f"{fake_provider.url}/__fake__/script",
        json=[{"text": "scripted over http"}, {"error": "overloaded", "path": "/v1/messages"}],
    )
    assert answer.json() == {"queued": 2}

    openai = stream(fake_adapter(fake_provider, "openai"), chat_request())
    anthropic = stream(fake_adapter(fake_provider, "anthropic"), chat_request())

    assert openai.text == "scripted over http"
    assert anthropic.error is not None
    assert anthropic.error.status == 529


def test_it_refuses_a_script_with_unknown_fields(fake_provider: FakeProvider) -> None:
    answer = httpx.post(f"{fake_provider.url}/__fake__/script", json={"txet": "typo"})
    assert answer.status_code == 400
    assert fake_provider.pending_scripts == 0


def test_it_records_requests_and_serves_them_over_http(fake_provider: FakeProvider) -> None:
    stream(fake_adapter(fake_provider, "anthropic"), chat_request())

    [recorded] = httpx.get(f"{fake_provider.url}/__fake__/requests").json()

    assert recorded["method"] == "POST"
    assert recorded["path"] == "/v1/messages"
    assert recorded["headers"]["x-api-key"] == KEY
    assert recorded["body"]["messages"] == [{"role": "user", "content": "hi"}]


def test_it_forgets_scripts_and_records_on_reset(fake_provider: FakeProvider) -> None:
    fake_provider.script(text="left over")
    httpx.get(f"{fake_provider.url}/v1/models")
    httpx.post(f"{fake_provider.url}/__fake__/reset")
    assert fake_provider.requests == []
    assert fake_provider.pending_scripts == 0


def test_it_restricts_keys_over_http(fake_provider: FakeProvider) -> None:
    httpx.post(f"{fake_provider.url}/__fake__/keys", json={"accepted_keys": ["sk-good"]})
    refused = httpx.get(f"{fake_provider.url}/v1/models", headers={"authorization": "Bearer x"})
    allowed = httpx.get(
        f"{fake_provider.url}/v1/models", headers={"authorization": "Bearer sk-good"}
    )
    assert (refused.status_code, allowed.status_code) == (401, 200)


@pytest.mark.parametrize(
    ("path", "body", "text_of"),
    [
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            lambda reply: reply["choices"][0]["message"]["content"],
        ),
        (
            "/v1/messages",
            {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
            lambda reply: reply["content"][0]["text"],
        ),
        (
            "/v1beta/models/m:generateContent",
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            lambda reply: reply["candidates"][0]["content"]["parts"][0]["text"],
        ),
    ],
)
def test_it_answers_non_streaming_requests_too(
    fake_provider: FakeProvider, path: str, body: dict[str, object], text_of: object
) -> None:
    reply = httpx.post(f"{fake_provider.url}{path}", json=body, headers={"x-api-key": "k"})
    assert reply.status_code == 200
    assert text_of(reply.json()) == DEFAULT_REPLY  # type: ignore[operator]


def test_it_runs_on_its_own_from_the_command_line() -> None:
    with FakeProvider() as probe:  # borrow a free port, then give it back
        port = probe.port
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.provider", "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert f"127.0.0.1:{port}" in process.stdout.readline()
        deadline = time.monotonic() + 5
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert models["object"] == "list"
    finally:
        process.terminate()
        process.wait(timeout=5)
