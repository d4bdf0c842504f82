import json

from django import template

register = template.Library()


@register.filter
def safe_json(value) -> str:
    """Compact JSON for display (autoescaped by the template)."""
    return "" if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@register.filter
def ms(value) -> str:
    return "" if value is None else f"{value:.0f} ms"
