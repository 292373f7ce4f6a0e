from __future__ import annotations

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from usage.services import cost_summary, format_usd

register = template.Library()


@register.filter
def usd(micro: int | None) -> str:
    """Micro-dollars as dollars; None is "price unknown", never $0."""
    return format_usd(micro)


@register.filter
def intcomma_plain(value: int | None) -> str:
    return f"{value or 0:,}"


@register.simple_tag
def cost_cell(
    cost_micro: int | None, turns: int = 1, unpriced_turns: int | None = None
) -> SafeString:
    """A cost as every usage table and total shows it (`usage.services.cost_summary`). A single
    event: `unpriced_turns` left out (its cost is None when its price was unknown)."""
    single = unpriced_turns is None
    if unpriced_turns is None:
        unpriced_turns = 1 if cost_micro is None else 0
    figure, note = cost_summary(cost_micro, turns=turns or 0, unpriced_turns=unpriced_turns)
    if not note:
        return format_html("{}", figure)
    # A sum's unknown stands out (a badge); one event's, in a narrow column, is small print.
    badge = "badge warn cost-note" if figure == "—" and not single else "small muted cost-note"
    return format_html('{} <span class="{}">{}</span>', figure, badge, note)
