"""Staff roles as Django groups. A migration creates them; superusers sit above both.

- Support: sees every operator list and page, changes nothing.
- Operators: also change accounts (disable, end sessions, reset 2FA, send a password
  reset link; never set a password), rate limits and prices, and revoke keys.
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


def ensure_roles(**kwargs: object) -> None:
    """Create the role groups with their permissions if missing (after every migrate).

    The migration creates them once; this keeps them after `manage.py flush` (which test
    runs and resets use), the same way Django recreates permissions.
    """
    from django.contrib.auth.models import Group, Permission

    for name, codes in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        wanted = []
        for code in codes:
            app_label, codename = code.split(".")
            permission = Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).first()
            if permission is not None:
                wanted.append(permission)
        group.permissions.set(wanted)
