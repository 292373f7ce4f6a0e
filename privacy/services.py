"""Deleting an account, with everything it holds.

The rule that makes a deletion final lives in `accounts.services.user_delete`: the data key
first (crypto-shredding), then every row. This is the one entry point every surface uses —
the user's own Settings page and the operators' admin — and the place that will also clear
what the account left outside the database.
"""

from __future__ import annotations

from accounts.models import User
from accounts.services import user_delete
from chat.services import turn_streams_delete


def account_delete(*, user: User) -> None:
    """Delete the account and everything it holds; nothing sealed for it opens again, and
    its live turn streams in Redis go too."""
    turn_streams_delete(owner=user)
    user_delete(user=user)
