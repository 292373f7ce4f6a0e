"""Small formatters for the operator dashboard."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def ms(value: int | None) -> str:
    """A duration in milliseconds, as "≤ 850 ms" or "≤ 1.5 s"; "—" when unknown."""
    if value is None:
        return "—"
    if value < 1000:
        return f"≤ {value} ms"
    return f"≤ {value / 1000:g} s"


@register.filter
def age(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


@register.filter
def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"
