from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.defaultfilters import pluralize

from accounts.models import AuditEvent, User
from accounts.services import audit_request, client_ip, sessions_end_others
from accounts.twofactor import has_two_factor, two_factor_disable


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ("-date_joined",)
    list_display = ("email", "display_name", "is_active", "is_staff", "date_joined", "last_login")
    list_filter = ("is_active", "is_staff", "is_superuser")
    search_fields = ("email", "display_name")
    readonly_fields = ("date_joined", "last_login")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("display_name",)}),
        ("Access", {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        ("Dates", {"fields": ("date_joined", "last_login")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)

    actions = ("disable_accounts", "enable_accounts", "end_all_sessions", "reset_two_factor")

    # SECURITY: only superusers grant roles, make operators or set someone's password;
    # operators change profiles and use the actions below.
    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        if request.user.is_superuser:
            return fields
        return (*fields, "is_staff", "is_superuser", "groups")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_staff and not request.user.is_superuser:
            return False  # SECURITY: operators do not change staff accounts, their own included
        return super().has_change_permission(request, obj)

    def _targets(self, request: HttpRequest, queryset: Any) -> Any:
        """The accounts an action may touch: staff only for superusers."""
        return queryset if request.user.is_superuser else queryset.filter(is_staff=False)

    def user_change_password(self, request: HttpRequest, id: str, form_url: str = "") -> Any:
        if not request.user.is_superuser:
            raise PermissionDenied("Only superusers set passwords; users reset their own.")
        return super().user_change_password(request, id, form_url)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting goes through privacy's account deletion (ops.admin.OperatorUserAdmin).
        return bool(request.user.is_superuser)

    def _operator_action(
        self, request: HttpRequest, user: User, action: str, **details: Any
    ) -> None:
        audit_request(
            request,
            owner=user,
            actor=request.user,  # type: ignore[arg-type]
            action=action,
            details=details,
        )

    @admin.action(
        description="Disable the selected accounts (and end their sessions)", permissions=["change"]
    )
    def disable_accounts(self, request: HttpRequest, queryset: Any) -> None:
        done = 0
        for user in (
            self._targets(request, queryset).filter(is_active=True).exclude(pk=request.user.pk)
        ):
            user.is_active = False
            user.save(update_fields=["is_active"])
            ended = sessions_end_others(user=user, keep_session_key=None)
            self._operator_action(
                request, user, AuditEvent.Action.OPERATOR_DISABLED, sessions=ended
            )
            done += 1
        self.message_user(request, f"{done} account(s) disabled.", messages.SUCCESS)

    @admin.action(description="Enable the selected accounts", permissions=["change"])
    def enable_accounts(self, request: HttpRequest, queryset: Any) -> None:
        done = 0
        for user in self._targets(request, queryset).filter(is_active=False):
            user.is_active = True
            user.save(update_fields=["is_active"])
            self._operator_action(request, user, AuditEvent.Action.OPERATOR_ENABLED)
            done += 1
        self.message_user(request, f"{done} account(s) enabled.", messages.SUCCESS)

    @admin.action(description="End all sessions of the selected accounts", permissions=["change"])
    def end_all_sessions(self, request: HttpRequest, queryset: Any) -> None:
        total = 0
        for user in self._targets(request, queryset):
            ended = sessions_end_others(user=user, keep_session_key=None)
            self._operator_action(
                request, user, AuditEvent.Action.OPERATOR_SESSIONS_ENDED, sessions=ended
            )
            total += ended
        self.message_user(request, f"{total} session{pluralize(total)} ended.", messages.SUCCESS)

    @admin.action(
        description="Reset two-factor authentication of the selected accounts",
        permissions=["change"],
    )
    def reset_two_factor(self, request: HttpRequest, queryset: Any) -> None:
        done = 0
        for user in self._targets(request, queryset):
            if has_two_factor(user):
                # Logged in the user's security log as turned off, by an operator.
                two_factor_disable(user=user, actor=request.user, ip_address=client_ip(request))  # type: ignore[arg-type]
                sessions_end_others(user=user, keep_session_key=None)
                done += 1
        self.message_user(
            request, f"Two-factor authentication reset for {done} account(s).", messages.SUCCESS
        )

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and form.changed_data:
            # The user sees in their security log what an operator changed (names only).
            audit_request(
                request,
                owner=obj,
                actor=request.user,  # type: ignore[arg-type]
                action=AuditEvent.Action.OPERATOR_CHANGED,
                details={"fields": ", ".join(sorted(form.changed_data))},
            )


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "owner",
        "actor",
        "action",
        "target_label",
        "count",
        "ip_address",
    )
    list_filter = ("action",)
    search_fields = ("owner__email", "target_label", "target_id")
    date_hierarchy = "created_at"
    list_select_related = ("owner", "actor")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
