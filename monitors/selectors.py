"""Reads of monitors, their alert events and deliveries, always scoped to one organization, and for an API key
limited to a project to that project's monitors (`accounts.selectors.project_scope`): a monitor of another project,
or of the whole organization, is not found for it."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from accounts.models import Organization
from accounts.selectors import project_scope
from config.errors import NotFound
from monitors.models import AlertEvent, Delivery, Monitor


def monitor_list(*, organization: Organization) -> QuerySet[Monitor]:
    """The organization's monitors (a project-limited key's: its project's), by name."""
    return Monitor.objects.filter(organization=organization, **project_scope(organization)).order_by("name", "id")


def monitor_get(*, organization: Organization, monitor_id: str) -> Monitor:
    """One monitor of the organization; another organization's (or, for a project-limited key, another project's)
    is a 404 like a missing one. The monitor carries the caller's organization instance, scope included."""
    monitor = Monitor.objects.filter(organization=organization, pk=monitor_id, **project_scope(organization)).first()
    if monitor is None:
        raise NotFound("Monitor not found.")
    monitor.organization = organization
    return monitor


def monitor_organization(*, monitor_id: str) -> Organization | None:
    """The organization a monitor belongs to (the console finds it before checking the user may see it)."""
    monitor = Monitor.objects.filter(pk=monitor_id).select_related("organization").first()
    return monitor.organization if monitor else None


def alert_list(
    *,
    organization: Organization,
    monitor: Monitor | None = None,
    monitor_id: str | None = None,
    states: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[AlertEvent]:
    """Alert events, newest first, optionally of one monitor (or monitor id: another organization's has none),
    in some states, created in [start, end). A project-limited key reads only its project's monitors' events."""
    events = AlertEvent.objects.filter(
        organization=organization, **project_scope(organization, field="monitor__project_id")
    )
    if monitor is not None:
        events = events.filter(monitor=monitor)
    if monitor_id is not None:
        events = events.filter(monitor_id=monitor_id)
    if states:
        events = events.filter(state__in=states)
    if start is not None:
        events = events.filter(created_at__gte=start)
    if end is not None:
        events = events.filter(created_at__lt=end)
    return events.select_related("monitor").order_by("-created_at", "-id")


def delivery_list(
    *, organization: Organization, monitor: Monitor, ids: list[int] | None = None, limit: int = 50
) -> list[Delivery]:
    """The monitor's latest deliveries (or those of `ids`) with their attempts, newest first."""
    deliveries = Delivery.objects.filter(organization=organization, monitor=monitor)
    if ids is not None:
        deliveries = deliveries.filter(pk__in=ids)
    return list(deliveries.prefetch_related("attempt_log").order_by("-created_at", "-id")[:limit])
