"""/admin/system/: how Steplens itself is doing, for superusers.

Celery workers and what they run, queue depths, the ingest backlog and lag, the periodic tasks and whether they
are late, the database's size, largest tables and partitions, runs in flight and pending steps, and the last
errors Steplens logged. Every read goes through ops.selectors (and the recent-errors ring of config.logging_setup);
a part that cannot be read (the broker down) says so instead of failing the page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from config.logging_setup import recent_errors
from ops.selectors import (
    broker_url,
    database_overview,
    ingest_backlog_get,
    periodic_tasks,
    queue_depths,
    runs_in_flight,
    steps_pending_by_age,
    system_warnings,
    workers_active,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
RECENT_ERRORS_SHOWN = 50


def _read(what: str, read: Callable[[], T], problems: list[str]) -> T | None:
    """`read()`, or None with a line in `problems` when it failed: one broken part never hides the others."""
    try:
        return read()
    except Exception as exc:
        logger.warning("System page: %s could not be read", what, exc_info=True)
        problems.append(f"{what}: {type(exc).__name__}")
        return None


def _error_rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**entry, "at": datetime.fromtimestamp(entry.get("time") or 0, tz=UTC)} for entry in entries]


def system_view(request: HttpRequest) -> HttpResponse:
    """The system page; superusers only (it shows every organization's load and the server's errors)."""
    if not request.user.is_superuser:
        raise PermissionDenied
    problems: list[str] = []
    now = timezone.now()
    backlog = _read("ingest backlog", lambda: ingest_backlog_get(now=now), problems)
    depths = _read("queue depths", queue_depths, problems) or {}
    periodic = _read("periodic tasks", lambda: periodic_tasks(now=now), problems) or []
    warnings = system_warnings(backlog=backlog, depths=depths, periodic=periodic) if backlog is not None else []
    context = {
        **admin.site.each_context(request),
        "title": "System",
        "now": now,
        "embedded": broker_url() is None,
        "backlog": backlog,
        "lag_limit": settings.STEPLENS_OPS_WARN_MAPPING_LAG_SECONDS,
        "depth_limit": settings.STEPLENS_OPS_WARN_QUEUE_DEPTH,
        "depths": sorted(depths.items()),
        "periodic": periodic,
        "workers": _read("Celery workers", workers_active, problems),
        "runs": _read("runs in flight", runs_in_flight, problems) or {},
        "pending_steps": _read("pending steps", lambda: steps_pending_by_age(now=now), problems) or {},
        "database": _read("database size", database_overview, problems),
        "errors": _error_rows(_read("recent errors", lambda: recent_errors(limit=RECENT_ERRORS_SHOWN), problems) or []),
        "warnings": warnings,
        "problems": problems,
    }
    return render(request, "admin/steplens/system.html", context)
