"""Display filters for the admin pages: thousands separators, percentages, milliseconds, ISO dates."""

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django import template

register = template.Library()


@register.filter
def thousands(value: Any) -> str:
    if value in (None, ""):
        return "–"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def percent(value: Any) -> str:
    if value in (None, ""):
        return "–"
    return f"{float(value) * 100:.1f}%"


@register.filter
def ms(value: Any) -> str:
    """Milliseconds as '740 ms' or '1.25 s'."""
    if value in (None, ""):
        return "–"
    value = float(value)
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


@register.filter
def ns_ms(value: Any) -> str:
    """Nanoseconds shown as milliseconds."""
    return "–" if value in (None, "") else ms(int(value) / 1e6)


@register.filter
def usd(value: Any) -> str:
    if value in (None, ""):
        return "–"
    try:
        return f"${Decimal(value):.6f}".rstrip("0").rstrip(".")
    except InvalidOperation:
        return str(value)


@register.filter
def isodate(value: Any) -> datetime | None:
    if not value:
        return None
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
