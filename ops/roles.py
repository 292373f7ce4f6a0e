"""Staff roles as Django groups. A migration creates them; superusers sit above both.

- Support: sees every operator list and page, changes nothing.
- Operators: also change accounts (disable, end sessions, reset 2FA), rate limits and
  prices, and revoke keys.
"""

from __future__ import annotations

SUPPORT = "Support"
OPERATORS = "Operators"

SUPPORT_PERMISSIONS: tuple[str, ...] = (
    "accounts.view_user",
    "accounts.view_auditevent",
    "keys.view_providerkey",
    "chat.view_conversation",
    "chat.view_message",
    "usage.view_usageevent",
    "usage.view_modelprice",
    "usage.view_ratelimitoverride",
)
OPERATOR_PERMISSIONS: tuple[str, ...] = (
    *SUPPORT_PERMISSIONS,
    "accounts.change_user",
    "keys.change_providerkey",  # the admin's only change to a key: revoke
    "usage.add_modelprice",
    "usage.change_modelprice",
    "usage.add_ratelimitoverride",
    "usage.change_ratelimitoverride",
    "usage.delete_ratelimitoverride",
)
ROLES: dict[str, tuple[str, ...]] = {
    SUPPORT: SUPPORT_PERMISSIONS,
    OPERATORS: OPERATOR_PERMISSIONS,
}
