from __future__ import annotations

from django import template

from usage.services import format_usd

register = template.Library()


@register.filter
def usd(micro: int | None) -> str:
    """Micro-dollars as dollars; None is "price unknown", never $0."""
    return format_usd(micro)


@register.filter
def intcomma_plain(value: int | None) -> str:
    return f"{value or 0:,}"
