"""Operator view of the data keys: metadata only.

SECURITY: the wrapped data key is never a field here, and nothing here can open it. Deleting
a DataKey crypto-shreds a user, so only `privacy`'s account deletion does it, never the
admin.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from vault.models import DataKey


@admin.register(DataKey)
class DataKeyAdmin(admin.ModelAdmin):
    list_display = ("owner", "kek_id", "created_at", "rotated_at")
    list_filter = ("kek_id",)
    search_fields = ("owner__email",)
    fields = ("owner", "kek_id", "created_at", "rotated_at")
    readonly_fields = fields
    list_select_related = ("owner",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
