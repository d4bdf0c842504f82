import json

from django import template
from django.utils.html import json_script

from engine.timeline import EventKind

register = template.Library()


@register.simple_tag
def event_kinds():
    """The trace's event kinds for the page's scripts (static/js/trace.js reads them from here, so
    the browser's vocabulary is the engine's own, engine/timeline.py)."""
    return json_script({kind.name: kind.value for kind in EventKind}, "event-kinds")


@register.filter
def safe_json(value) -> str:
    """Compact JSON for display (autoescaped by the template)."""
    return "" if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@register.filter
def ms(value) -> str:
    return "" if value is None else f"{value:.0f} ms"
