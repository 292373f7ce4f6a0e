from __future__ import annotations

from django import template

from usage.selectors import DaySeries
from usage.services import format_usd

register = template.Library()


@register.filter
def usd(micro: int | None) -> str:
    """Micro-dollars as dollars; None is "price unknown", never $0."""
    return format_usd(micro)


@register.filter
def intcomma_plain(value: int | None) -> str:
    return f"{value or 0:,}"


@register.filter
def daily_rows(series: DaySeries) -> list[dict[str, object]]:
    rows = []
    for index, day in enumerate(series.days):
        for model in series.models:
            cost, tokens = series.cost[model][index], series.tokens[model][index]
            if cost or tokens:
                rows.append({"day": day, "model": model, "cost": cost, "tokens": tokens})
    return rows
