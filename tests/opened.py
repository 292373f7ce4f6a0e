"""Sealed values of test rows, opened with their owner's key."""

from __future__ import annotations

from chat.models import Message
from chat.selectors import message_error
from vault.services import OwnerCipher


def error_of(message: Message) -> str:
    """A failed reply's message as its owner reads it ("" unless it failed)."""
    message.refresh_from_db()
    return message_error(message, OwnerCipher(message.owner))
