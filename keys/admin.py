"""Operator view of the provider keys: metadata only.

SECURITY: the sealed secret is never a field of this admin, and nothing here can open it.
Operators cannot add or edit keys.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.services import client_ip
from keys.models import ProviderKey
from keys.services import RequestInfo, provider_key_revoke


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # SECURITY: deleting a key here would skip the owner's security log; keys are
        # deleted through the services, never the admin.
        return False


@admin.register(ProviderKey)
class ProviderKeyAdmin(ReadOnlyAdmin):
    list_display = (
        "label",
        "owner",
        "preset",
        "fingerprint",
        "status",
        "last_used_at",
        "created_at",
    )
    list_filter = ("status", "preset")
    search_fields = ("owner__email", "label", "fingerprint")
    fields = (
        "id",
        "owner",
        "preset",
        "label",
        "base_url",
        "fingerprint",
        "secret_version",
        "status",
        "status_reason",
        "last_verified_at",
        "last_used_at",
        "expires_on",
        "priority",
        "created_at",
        "updated_at",
        "revoked_at",
    )
    readonly_fields = fields
    list_select_related = ("owner",)
    actions = ("revoke_keys",)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        # The admin's only change to a key; operators hold keys.change_providerkey for it.
        return request.user.has_perm("keys.change_providerkey")

    @admin.action(
        description="Revoke the selected keys (their owners are told)", permissions=["revoke"]
    )
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ProviderKey]) -> None:
        info = RequestInfo(actor=request.user, ip_address=client_ip(request))  # type: ignore[arg-type]
        revoked = 0
        for key in queryset.exclude(status=ProviderKey.Status.REVOKED).select_related("owner"):
            # Logged in the owner's security log as "Key revoked", by an operator.
            provider_key_revoke(key=key, info=info)
            key.status_reason = "Revoked by an operator. Also revoke it in your provider's console."
            key.save(update_fields=["status_reason", "updated_at"])
            revoked += 1
        self.message_user(request, f"{revoked} key(s) revoked.", messages.SUCCESS)
