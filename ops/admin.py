"""Operator admins for models whose apps have no admin of their own, and the user admin's
cross-app parts (rate-limit overrides, usage totals, activity filter).

SECURITY: metadata only. Conversations and messages never list, show, filter or search
their sealed title, system prompt, text or error (nor `notice`, which is free text); usage
events are read-only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet, Sum
from django.forms import BaseFormSet, ModelForm
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from accounts.admin import UserAdmin
from accounts.models import AuditEvent, User
from accounts.services import operator_audit
from chat.models import Conversation, Message
from ops.selectors import stuck_turns_filter
from ops.site import changelist
from privacy.services import account_delete
from usage.models import ModelPrice, RateLimitOverride, UsageDaily, UsageEvent, UserActivity
from usage.services import format_usd


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- users ---------------------------------------------------------------------------------


class ActiveFilter(admin.SimpleListFilter):
    title = "made a turn"
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("7", "in the last 7 days"), ("30", "in the last 30 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() not in {"7", "30"}:
            return queryset
        since = timezone.localdate() - timedelta(days=int(self.value() or 0) - 1)
        active = UserActivity.objects.filter(last_turn_on__gte=since).values("user_id")
        return queryset.filter(pk__in=active)


class RateLimitOverrideInline(admin.StackedInline):
    model = RateLimitOverride
    fk_name = "user"
    max_num = 1
    extra = 0
    verbose_name = "rate-limit override"
    verbose_name_plural = "rate-limit override (empty: the site's defaults)"


class OperatorUserAdmin(UserAdmin):
    inlines = [RateLimitOverrideInline]
    list_filter = (*UserAdmin.list_filter, ActiveFilter, "groups")  # type: ignore[assignment]

    def delete_model(self, request: HttpRequest, obj: User) -> None:
        account_delete(user=obj)  # data key first (crypto-shredding), sessions ended

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for user in queryset:
            account_delete(user=user)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return (*super().get_readonly_fields(request, obj), "usage_totals")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        return (*fieldsets, ("Usage", {"fields": ("usage_totals",)}))

    @admin.display(description="usage (all time)")
    def usage_totals(self, obj: User) -> str:
        totals = UsageDaily.objects.filter(owner=obj).aggregate(
            turns=Sum("turns"),
            errors=Sum("errors"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost=Sum("cost_micro"),
        )
        return format_html(
            "{} turns ({} failed), {} input and {} output tokens, {} spent on the user's keys. "
            '<a href="{}">Usage events</a>',
            totals["turns"] or 0,
            totals["errors"] or 0,
            totals["input_tokens"] or 0,
            totals["output_tokens"] or 0,
            format_usd(totals["cost"] or 0),
            changelist("usage_usageevent", owner__exact=obj.pk),
        )

    def save_formset(
        self, request: HttpRequest, form: ModelForm[Any], formset: BaseFormSet[Any], change: bool
    ) -> None:
        super().save_formset(request, form, formset, change)
        if formset.has_changed():
            operator_audit(
                request,
                owner=form.instance,
                action=AuditEvent.Action.OPERATOR_RATE_LIMITS,
                details=_rate_limit_details(form.instance),
            )


def _rate_limit_details(user: User) -> dict[str, object]:
    override = RateLimitOverride.objects.filter(user=user).first()
    if override is None:
        return {"limits": "site defaults"}
    return {
        "turns per minute": override.turns_per_minute or "default",
        "concurrent turns": override.concurrent_turns or "default",
    }


admin.site.unregister(User)
admin.site.register(User, OperatorUserAdmin)


@admin.register(RateLimitOverride)
class RateLimitOverrideAdmin(admin.ModelAdmin):
    list_display = ("user", "turns_per_minute", "concurrent_turns", "note")
    search_fields = ("user__email",)
    autocomplete_fields = ("user",)
    list_select_related = ("user",)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        operator_audit(
            request,
            owner=obj.user,
            action=AuditEvent.Action.OPERATOR_RATE_LIMITS,
            details=_rate_limit_details(obj.user),
        )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        user = obj.user
        super().delete_model(request, obj)
        operator_audit(
            request,
            owner=user,
            action=AuditEvent.Action.OPERATOR_RATE_LIMITS,
            details={"limits": "site defaults"},
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset.select_related("user"):
            self.delete_model(request, obj)


# --- conversations and messages (metadata only) -----------------------------------------


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "owner",
        "preset",
        "model",
        "message_count",
        "temporary",
        "archived",
        "created_at",
        "last_message_at",
    )
    list_filter = ("preset", "temporary", "archived")
    search_fields = ("owner__email", "model")
    list_select_related = ("owner",)
    show_full_result_count = False
    # SECURITY: sealed_title and sealed_system_prompt are never fields here.
    fields = (
        "id",
        "owner",
        "provider_key",
        "preset",
        "model",
        "message_count",
        "temporary",
        "archived",
        "created_at",
        "last_message_at",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).annotate(n_messages=Count("messages"))

    @admin.display(description="messages", ordering="n_messages")
    def message_count(self, obj: Any) -> str:
        return format_html(
            '<a href="{}">{}</a>',
            changelist("chat_message", conversation__id__exact=obj.pk),
            obj.n_messages,
        )


class StuckFilter(admin.SimpleListFilter):
    title = "stuck"
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("1", "past their time limits")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "1":
            return queryset.filter(stuck_turns_filter())
        return queryset


@admin.register(Message)
class MessageAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "owner",
        "role",
        "status",
        "model",
        "error_kind",
        "input_tokens",
        "output_tokens",
        "ttft_ms",
        "latency_ms",
        "created_at",
    )
    list_filter = (StuckFilter, "status", "role", "error_kind")
    search_fields = ("owner__email", "model")
    list_select_related = ("owner",)
    show_full_result_count = False
    # SECURITY: sealed_content and sealed_error are never fields; notice is free text.
    fields = (
        "id",
        "owner",
        "conversation",
        "role",
        "status",
        "error_kind",
        "provider_key",
        "model",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "ttft_ms",
        "latency_ms",
        "provider_calls",
        "finish_reason",
        "trimmed_messages",
        "created_at",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields


# --- usage and prices ------------------------------------------------------------------------


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "created_at",
        "owner",
        "preset",
        "model",
        "status",
        "error_kind",
        "input_tokens",
        "output_tokens",
        "cost",
        "ttft_ms",
        "latency_ms",
    )
    list_filter = ("status", "preset", "error_kind", "day")
    search_fields = ("owner__email", "model", "key_label")
    list_select_related = ("owner",)
    show_full_result_count = False
    readonly_fields = [f.name for f in UsageEvent._meta.fields]

    @admin.display(description="cost", ordering="cost_micro")
    def cost(self, obj: UsageEvent) -> str:
        return format_usd(obj.cost_micro)


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = (
        "preset",
        "model",
        "input_per_mtok",
        "output_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "overridden",
        "updated_at",
    )
    list_filter = ("preset", "overridden")
    search_fields = ("model",)
    readonly_fields = ("overridden", "updated_at")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a price is overridden, not removed: past costs keep their snapshot

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: Any, change: bool) -> None:
        obj.overridden = True
        super().save_model(request, obj, form, change)
        # Prices concern no single user: the operator's own log keeps the trail.
        operator_audit(
            request,
            owner=request.user,  # type: ignore[arg-type]
            action=AuditEvent.Action.OPERATOR_PRICE_CHANGED,
            target_id=str(obj.pk),
            target_label=f"{obj.preset}/{obj.model}",
            details={"fields": ", ".join(sorted(form.changed_data)) or "none"},
        )
