"""`{% system_banner %}`: the warning banner of every console page (templates/admin/base_site.html)."""

from typing import Any

from django import template

from ops.selectors import system_banner as banner_warnings

register = template.Library()


@register.inclusion_tag("admin/steplens/_system_banner.html", takes_context=True)
def system_banner(context: dict[str, Any]) -> dict[str, Any]:
    """The warnings over their thresholds (mapping lag, queue depth, a late periodic task), for staff only; cached
    for STEPLENS_OPS_BANNER_CACHE_SECONDS, so a page pays a cache read."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not (user.is_active and user.is_staff):
        return {"warnings": []}
    return {"warnings": banner_warnings(), "show_link": user.is_superuser}
