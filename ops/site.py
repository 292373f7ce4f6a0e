"""The operator site: Django's admin with a dashboard as its index.

`byok_site.apps.OperatorAdminConfig` makes `OperatorAdminSite` the default `admin.site`, so
each app's `admin.py` registers on it; the admins of models without one of their own (chat,
usage) live in `ops/admin.py`.

SECURITY: operators see metadata only. No admin here has a field, column, filter or search
on key plaintext, sealed bytes or message text, and the dashboard reads rollups only.
Staff reach it only with a verified second factor (accounts.middleware).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.utils.safestring import SafeString

from ops import selectors
from usage.charts import Chart, chart_html, stacked_bars
from usage.services import format_usd


def _compact(value: object) -> str:
    number = int(value)  # type: ignore[call-overload]
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if abs(number) >= size:
            return f"{number / size:.1f}{suffix}"
    return str(number)


def _usd(value: object) -> str:
    return format_usd(int(value))  # type: ignore[call-overload]


def chart_svg(chart: Chart) -> SafeString:
    return chart_html(chart, table_note="the table has the totals")


def changelist(model: str, **filters: object) -> str:
    """The admin list of `model` ("app_model"), filtered by `filters`."""
    url = reverse(f"admin:{model}_changelist")
    return f"{url}?{urlencode(filters)}" if filters else url


def _day(value: date) -> str:
    return value.isoformat()


class OperatorAdminSite(admin.AdminSite):
    site_header = "BYOK operator"
    site_title = "BYOK operator"
    index_title = "Dashboard"
    index_template = "admin/dashboard.html"

    def get_urls(self) -> list[URLResolver | URLPattern]:
        extra = [
            path(
                "dashboard/health/",
                self.admin_view(self.health_view),
                name="dashboard_health",
            ),
        ]
        return extra + super().get_urls()

    def index(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        figures = selectors.dashboard()
        context = {
            "dashboard": figures,
            "links": self._links(figures),
            "tokens_chart": chart_svg(
                stacked_bars(
                    title="Tokens per day by provider (30 days)",
                    days=figures.days,
                    series=figures.tokens_by_preset,
                    order=figures.presets,
                    fmt=_compact,
                )
            ),
            "spend_chart": chart_svg(
                stacked_bars(
                    title="Users' spend per day by provider (30 days)",
                    days=figures.days,
                    series=figures.spend_by_preset,
                    order=figures.presets,
                    fmt=_usd,
                )
            ),
            "spend_rows": [
                (
                    preset,
                    sum(figures.tokens_by_preset[preset]),
                    format_usd(sum(figures.spend_by_preset[preset])),
                    changelist(
                        "usage_usageevent",
                        preset=preset,
                        day__gte=_day(figures.chart_start),
                    ),
                )
                for preset in figures.presets
            ],
            "errors_rows": [
                (
                    kind,
                    count,
                    changelist(
                        "usage_usageevent",
                        status="error",
                        error_kind=kind,
                        day__gte=_day(figures.window_start),
                    ),
                )
                for kind, count in figures.errors_by_kind
            ],
            "latency_rows": [
                (
                    row,
                    changelist(
                        "usage_usageevent", preset=row.preset, day__gte=_day(figures.window_start)
                    ),
                )
                for row in figures.latency
            ],
            "health": selectors.health(),
            **(extra_context or {}),
        }
        context["health_links"] = self._health_links()
        return super().index(request, context)

    def health_view(self, request: HttpRequest) -> HttpResponse:
        """htmx fragment: workers, queues, oldest queued turn and stuck turns."""
        return TemplateResponse(
            request,
            "admin/_dashboard_health.html",
            {"health": selectors.health(), "health_links": self._health_links()},
        )

    @staticmethod
    def _links(figures: selectors.Dashboard) -> dict[str, str]:
        window = _day(figures.window_start)
        today = _day(figures.today)
        joined_since = datetime.combine(figures.window_start, time.min, tzinfo=UTC).isoformat()
        return {
            "users": changelist("accounts_user"),
            "users_new": changelist("accounts_user", date_joined__gte=joined_since),
            "users_active": changelist("accounts_user", active="7"),
            "turns_today": changelist("usage_usageevent", day=today),
            "turns_window": changelist("usage_usageevent", day__gte=window),
            "errors_window": changelist("usage_usageevent", status="error", day__gte=window),
            "keys_invalid": changelist("keys_providerkey", status="invalid"),
            "keys_no_credit": changelist("keys_providerkey", status="no_credit"),
        }

    @staticmethod
    def _health_links() -> dict[str, str]:
        return {
            "queued": changelist("chat_message", status="queued"),
            "running": changelist("chat_message", status="running"),
            "stuck": changelist("chat_message", stuck="1"),
            "healthz": reverse("healthz"),
        }
