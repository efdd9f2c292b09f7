"""The JSON a notification carries, and its one-line `text` (what Slack and Mattermost show as is)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.urls import NoReverseMatch, reverse

from monitors.models import AlertEvent, Monitor, MonitorState

_TITLES = {MonitorState.ALERTING: "ALERTING", MonitorState.OK: "RESOLVED", MonitorState.NO_DATA: "NO DATA"}


def _base() -> str:
    return settings.STEPLENS_PUBLIC_URL.rstrip("/")


def _query(filters: dict[str, Any]) -> str:
    flat: list[tuple[str, str]] = []
    for key, value in sorted(filters.items()):
        values = value if isinstance(value, list | tuple) else [value]
        if values:
            flat.append((key, ",".join(_param(v) for v in values)))
    return urlencode(flat)


def _param(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def links(*, organization_id: str, filters: dict[str, Any]) -> dict[str, str]:
    """Where the matching steps are: the console's steps list, the API's step list and its usage report."""
    query = _query(filters)
    try:
        console = reverse("admin:steps_step_changelist")
    except NoReverseMatch:  # an admin without the steps changelist (a settings variant): the admin root
        console = "/admin/"
    return {
        "console": f"{_base()}{console}?{urlencode({'organization': organization_id})}&{query}",
        "api_steps": f"{_base()}/v1/steps?{query}",
        "api_usage": f"{_base()}/v1/usage?{query}",
    }


def window_label(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _number(value: float | None) -> str:
    if value is None:
        return "no value"
    return f"{value:.6g}"


def monitor_summary(monitor: Monitor) -> dict[str, Any]:
    return {
        "id": monitor.pk,
        "name": monitor.name,
        "metric": monitor.metric,
        "operator": monitor.operator,
        "threshold": monitor.threshold,
        "window_seconds": monitor.window_seconds,
        "min_steps": monitor.min_steps,
        "group_by": monitor.group_by or None,
    }


def event_text(*, monitor: Monitor, event: AlertEvent) -> str:
    """One line: what happened, the number against the threshold, the window, the group, and the console link."""
    title = _TITLES[event.state]
    if event.state == MonitorState.OK and event.previous_state != MonitorState.ALERTING:
        title = "OK"
    group = f" [{event.group_by}={event.group}]" if event.group is not None else ""
    window = window_label(round((event.window_end - event.window_start).total_seconds()))
    if event.state == MonitorState.NO_DATA:
        detail = f"{event.steps} steps in the last {window} (needs {monitor.min_steps}): no data"
    elif event.state == MonitorState.ALERTING:
        detail = f"{event.metric} = {_number(event.value)} {event.operator} {event.threshold:g} over the last {window}"
        detail += f" ({event.steps} steps)"
    else:
        detail = f"{event.metric} = {_number(event.value)} over the last {window} ({event.steps} steps); "
        detail += f"alerts at {event.operator} {event.threshold:g}"
    link = links(organization_id=event.organization_id, filters=_window_filters(event))["console"]
    return f"[{title}] {monitor.name}{group}: {detail}. Steps: {link}"


def _window_filters(event: AlertEvent) -> dict[str, Any]:
    return {**event.filters, "start": event.window_start.isoformat(), "end": event.window_end.isoformat()}


def event_fields(event: AlertEvent) -> dict[str, Any]:
    """What an alert event says, the same in the API (/v1/alerts) and in a notification's body: the state change,
    the numbers, the window (times as datetimes; the caller renders them), the filters and the links."""
    return {
        "state": event.state,
        "previous_state": event.previous_state,
        "resolved": event.previous_state == MonitorState.ALERTING and event.state != MonitorState.ALERTING,
        "metric": event.metric,
        "operator": event.operator,
        "value": event.value,
        "threshold": event.threshold,
        "recovery_threshold": event.recovery_threshold,
        "steps": event.steps,
        "window": {
            "start": event.window_start,
            "end": event.window_end,
            "seconds": round((event.window_end - event.window_start).total_seconds()),
        },
        "filters": event.filters,
        "links": links(organization_id=event.organization_id, filters=_window_filters(event)),
    }


def event_payload(*, monitor: Monitor, event: AlertEvent) -> dict[str, Any]:
    """The body of an alert notification."""
    fields = event_fields(event)
    window = fields.pop("window")
    return {
        "type": "alert",
        "event_id": event.pk,
        "monitor": monitor_summary(monitor),
        **fields,
        "group": {"dimension": event.group_by, "value": event.group} if event.group is not None else None,
        "window": {**window, "start": window["start"].isoformat(), "end": window["end"].isoformat()},
        "created_at": event.created_at.isoformat(),
        "text": event_text(monitor=monitor, event=event),
        "subject": f"[Steplens] {_TITLES[event.state]}: {monitor.name}",
    }


def test_payload(*, monitor: Monitor) -> dict[str, Any]:
    """A sample notification (the test button): the monitor's current numbers, marked as a test."""
    return {
        "type": "test",
        "event_id": None,
        "monitor": monitor_summary(monitor),
        "state": monitor.state,
        "value": monitor.value,
        "steps": monitor.steps,
        "text": f"[TEST] {monitor.name}: a test notification from Steplens ({monitor.metric} {monitor.operator} "
        f"{monitor.threshold:g} over {window_label(monitor.window_seconds)}; now {monitor.state}, "
        f"{_number(monitor.value)}).",
        "subject": f"[Steplens] test: {monitor.name}",
    }
