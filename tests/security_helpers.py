"""Helpers for the account-security tests: TOTP codes, enrolment, sudo expiry."""

from __future__ import annotations

import time

from django.test import Client
from django_otp.oath import TOTP

from accounts import sudo
from accounts.models import TOTPDevice
from accounts.twofactor import totp_device_confirm, totp_device_start


def code_for(device: TOTPDevice, *, offset: int = 0) -> str:
    device.refresh_from_db()
    totp = TOTP(device.seed(), device.step, 0, device.digits, device.drift)
    totp.time = time.time() + offset
    return f"{totp.token():0{device.digits}d}"


def enrol(user) -> tuple[TOTPDevice, list[str]]:
    """Turn 2FA on for `user` directly; returns the device and the recovery codes."""
    device = totp_device_start(user=user)
    codes = totp_device_confirm(user=user, device=device, token=code_for(device))
    assert codes is not None
    device.refresh_from_db()
    return device, codes


def allow_code_reuse(device: TOTPDevice) -> None:
    """Tests verify several codes within one 30-second step; the app refuses a repeat."""
    TOTPDevice.objects.filter(pk=device.pk).update(
        last_t=-1, throttling_failure_count=0, throttling_failure_timestamp=None
    )


def expire_sudo(client: Client) -> None:
    session = client.session
    session[sudo.SESSION_KEY] = time.time() - 1
    session.save()


def make_conversation(owner, key, text: str, *, reply: str = "noted", title: str = "Plans"):
    """A conversation with one sealed exchange, written directly (no turn runs)."""
    from chat.models import Conversation, Message
    from vault.services import OwnerCipher

    cipher = OwnerCipher(owner)
    conversation = Conversation.objects.create(
        owner=owner, provider_key=key, preset=key.preset, model="gpt-test"
    )
    conversation.sealed_title = cipher.seal("conversation_title", conversation.pk, title)
    conversation.save(update_fields=["sealed_title"])
    message = None
    for role, content in (("user", text), ("assistant", reply)):
        message = Message.objects.create(
            conversation=conversation,
            owner=owner,
            parent=message,
            role=role,
            model="gpt-test",
            input_tokens=12 if role == "assistant" else None,
            output_tokens=34 if role == "assistant" else None,
        )
        message.sealed_content = cipher.seal("message", message.pk, content)
        message.save(update_fields=["sealed_content"])
    conversation.active_leaf = message
    conversation.save(update_fields=["active_leaf"])
    return conversation
