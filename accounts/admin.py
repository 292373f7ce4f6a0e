from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.http import Http404, HttpRequest
from django.template.defaultfilters import pluralize

from accounts.forms import OperatorUserChangeForm, OperatorUserCreationForm
from accounts.models import AuditEvent, User
from accounts.services import (
    account_changed_by_operator,
    account_created_by_operator,
    account_disable,
    account_enable,
    account_role_changed,
    account_sessions_end,
    password_reset_link_send,
)
from accounts.twofactor import two_factor_reset

ROLE_FIELDS = frozenset({"is_staff", "is_superuser", "groups"})


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Accounts in the operator site.

    SECURITY: nobody here, superusers included, sets or sees a password, nor changes the
    address a reset link goes to: there is no password field on either form, the
    password page is a 404, and an account created here has an unusable password. An
    operator who wants a user back in sends them a reset link (the action below), which
    only the user's mailbox receives. There is no way to sign in as a user. Every action
    and every saved change lands in the user's security log as an operator's.
    """

    form = OperatorUserChangeForm
    add_form = OperatorUserCreationForm
    add_form_template = None  # Django's speaks of a password
    ordering = ("-date_joined",)
    list_display = ("email", "display_name", "is_active", "is_staff", "date_joined", "last_login")
    list_filter = ("is_active", "is_staff", "is_superuser")
    search_fields = ("email", "display_name")
    readonly_fields = ("date_joined", "last_login")
    fieldsets = (
        (None, {"fields": ("email",)}),
        ("Profile", {"fields": ("display_name",)}),
        ("Access", {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        ("Dates", {"fields": ("date_joined", "last_login")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "display_name")}),)

    actions = (
        "disable_accounts",
        "enable_accounts",
        "end_all_sessions",
        "reset_two_factor",
        "send_password_reset",
    )

    # SECURITY: only superusers grant roles or make operators; operators change profiles
    # and use the actions below. The address is nobody's to change but the owner's (Settings,
    # behind sudo): whoever changes it could then reset the password to their own mailbox.
    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields = (*fields, "email")
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
        raise Http404("Passwords are set by their owners, from a reset link.")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting goes through privacy's account deletion (ops.admin.OperatorUserAdmin).
        return bool(request.user.is_superuser)

    @admin.action(
        description="Disable the selected accounts (and end their sessions)", permissions=["change"]
    )
    def disable_accounts(self, request: HttpRequest, queryset: Any) -> None:
        done = sum(
            account_disable(user=user, request=request)
            for user in self._targets(request, queryset).exclude(pk=request.user.pk)
        )
        self.message_user(request, f"{done} account(s) disabled.", messages.SUCCESS)

    @admin.action(description="Enable the selected accounts", permissions=["change"])
    def enable_accounts(self, request: HttpRequest, queryset: Any) -> None:
        done = sum(
            account_enable(user=user, request=request) for user in self._targets(request, queryset)
        )
        self.message_user(request, f"{done} account(s) enabled.", messages.SUCCESS)

    @admin.action(description="End all sessions of the selected accounts", permissions=["change"])
    def end_all_sessions(self, request: HttpRequest, queryset: Any) -> None:
        total = sum(
            account_sessions_end(user=user, request=request)
            for user in self._targets(request, queryset)
        )
        self.message_user(request, f"{total} session{pluralize(total)} ended.", messages.SUCCESS)

    @admin.action(
        description="Reset two-factor authentication of the selected accounts",
        permissions=["change"],
    )
    def reset_two_factor(self, request: HttpRequest, queryset: Any) -> None:
        done = sum(
            two_factor_reset(user=user, request=request)
            for user in self._targets(request, queryset)
        )
        self.message_user(
            request, f"Two-factor authentication reset for {done} account(s).", messages.SUCCESS
        )

    @admin.action(
        description="Send a password reset link to the selected accounts", permissions=["change"]
    )
    def send_password_reset(self, request: HttpRequest, queryset: Any) -> None:
        # SECURITY: the link goes to the user's mailbox only; this page never shows it.
        sent = sum(
            password_reset_link_send(user=user, request=request)
            for user in self._targets(request, queryset)
        )
        self.message_user(
            request,
            f"Password reset link e-mailed to {sent} account(s) (disabled accounts get none).",
            messages.SUCCESS,
        )

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        if not change:
            # SECURITY: a password nobody knows; the owner sets one from a reset link.
            obj.set_unusable_password()
            super().save_model(request, obj, form, change)
            account_created_by_operator(user=obj, request=request)
            return
        changed = set(form.changed_data)
        activate = obj.is_active if "is_active" in changed else None
        if activate is not None:
            obj.is_active = not activate  # the service changes it, with its trail
        super().save_model(request, obj, form, change)
        if activate is True:
            account_enable(user=obj, request=request)
        elif activate is False:
            account_disable(user=obj, request=request)
        # The user sees in their security log what an operator changed (names only).
        account_changed_by_operator(
            user=obj, request=request, fields=sorted(changed - ROLE_FIELDS - {"is_active"})
        )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if change and ROLE_FIELDS & set(form.changed_data):
            account_role_changed(user=form.instance, request=request)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "owner",
        "actor",
        "by_operator",
        "action",
        "target_label",
        "count",
        "ip_address",
    )
    list_filter = ("by_operator", "action")
    search_fields = ("owner__email", "actor__email", "target_label", "target_id")
    date_hierarchy = "created_at"
    list_select_related = ("owner", "actor")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
