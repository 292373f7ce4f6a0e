"""Helpers for the chat tests: start a conversation, read a turn's SSE stream."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx
from django.test import Client

from chat.models import Message
from chat.services import conversation_create, message_send
from tests.keys_helpers import add_key


@dataclass
class SseEvent:
    event: str
    data: dict
    id: str | None


def start_chat(owner, fake, *, model="gpt-test", preset="custom", base_path="openai", **key_args):
    key = add_key(owner, fake, preset=preset, base_url=fake.base_url(base_path), **key_args)
    return conversation_create(owner=owner, key=key, model=model), key


def session_cookie(user) -> dict[str, str]:
    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value}


def read_stream(
    server, user, message: Message, *, last_event_id=None, stop_after=None, timeout=20.0
):
    """Read the turn's events until done/error (or `stop_after` events)."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events: list[SseEvent] = []
    url = f"{server.url}/chat/m/{message.pk}/stream/"
    with (
        httpx.Client(cookies=session_cookie(user), timeout=timeout) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "event" in fields:
                    events.append(
                        SseEvent(
                            fields["event"],
                            json.loads(fields.get("data", "{}")),
                            fields.get("id"),
                        )
                    )
                    if fields["event"] in ("done", "error"):
                        return events
                    if stop_after and len(events) >= stop_after:
                        return events
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
    return events


def wait_final(message: Message, timeout=20.0) -> Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message.refresh_from_db()
        if message.is_final:
            return message
        time.sleep(0.05)
    raise AssertionError(f"turn stayed {message.status}")


def send(conversation, text="Hello there"):
    return message_send(conversation=conversation, text=text)


def vendor_chat(owner, fake, preset, model, *, label="Vendor key"):
    """A conversation on a vendor preset (anthropic, gemini...) whose key points at the fake.

    Vendor presets always use the vendor's URL, so the key is re-pointed in the database and
    re-sealed for the new binding, exactly as the vault would have sealed it there.
    """
    from keys.models import ProviderKey
    from keys.services import _seal_secret

    key = add_key(owner, fake, preset="custom", label=label)
    base_path = {"anthropic": "anthropic", "gemini": "gemini"}.get(preset, "openai")
    ProviderKey.objects.filter(pk=key.pk).update(preset=preset, base_url=fake.base_url(base_path))
    key.refresh_from_db()
    _seal_secret(key, "sk-test-good-0123456789abcdefWXYZ")
    key.save(update_fields=["sealed_secret", "fingerprint"])
    return conversation_create(owner=owner, key=key, model=model), key


CHAT_PATHS = {
    "custom": "/chat/completions",
    "anthropic": "/messages",
    "gemini": "streamGenerateContent",
}
