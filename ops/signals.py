"""Celery signal receivers: every task execution is timed into config.metrics (with the rows a job reports), the
periodic tasks' last runs are written to PeriodicTaskRun, and the ids a task was given go on its log lines.

Connected from OpsConfig.ready, so they work for every task without the apps' tasks knowing about them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from celery import signals
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from config.logging_setup import log_context_bind, log_context_reset
from config.metrics import multiprocess_dir_prune, rows_from_result, task_record
from ops.models import PeriodicTaskRun

logger = logging.getLogger(__name__)

# Task keyword arguments that name what the task works on: they go on its log lines.
_CONTEXT_KWARGS = ("run_id", "step_id", "organization_id", "batch_id")
_started: dict[str, tuple[float, Any]] = {}
_MAX_ERROR = 2000


def _periodic_task_names() -> set[str]:
    schedule = getattr(settings, "CELERY_BEAT_SCHEDULE", {}) or {}
    return {spec["task"] for spec in schedule.values() if "task" in spec}


def _prerun(task_id: str | None = None, task: Any = None, kwargs: dict | None = None, **_: Any) -> None:
    context = {key: (kwargs or {}).get(key) for key in _CONTEXT_KWARGS}
    token = log_context_bind(task=getattr(task, "name", None), task_id=task_id, **context)
    if task_id:
        _started[task_id] = (time.monotonic(), token)
    name = getattr(task, "name", "")
    if name in _periodic_task_names():
        try:
            PeriodicTaskRun.objects.update_or_create(task=name, defaults={"last_started_at": timezone.now()})
        except DatabaseError:
            logger.warning("Could not record the start of periodic task %s", name, exc_info=True)


def _postrun(
    task_id: str | None = None, task: Any = None, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    started = _started.pop(task_id or "", None)
    duration = time.monotonic() - started[0] if started else 0.0
    if started is not None:
        with contextlib.suppress(ValueError):  # bound in another context (a thread pool): nothing to undo here
            log_context_reset(started[1])
    name = getattr(task, "name", "") or "unknown"
    outcome = {"SUCCESS": "success", "RETRY": "retry"}.get(state or "", "failure")
    rows = rows_from_result(retval) if outcome == "success" else None
    task_record(task=name, outcome=outcome, duration_s=duration, rows=rows)
    if name in _periodic_task_names():
        error = "" if outcome == "success" else f"{type(retval).__name__}: {retval}"[:_MAX_ERROR]
        try:
            PeriodicTaskRun.objects.update_or_create(
                task=name,
                defaults={
                    "last_finished_at": timezone.now(),
                    "last_outcome": outcome,
                    "last_duration_ms": int(duration * 1000),
                    "last_rows": rows,
                    "last_error": error,
                },
            )
        except DatabaseError:
            logger.warning("Could not record the run of periodic task %s", name, exc_info=True)


def _worker_init(**_: Any) -> None:
    # Metric files of processes gone since the last start: they would pile up with every restart.
    multiprocess_dir_prune()


def connect() -> None:
    """Connect the receivers (idempotent: Celery's signals keep one receiver per dispatch_uid)."""
    signals.task_prerun.connect(_prerun, weak=False, dispatch_uid="steplens.ops.prerun")
    signals.task_postrun.connect(_postrun, weak=False, dispatch_uid="steplens.ops.postrun")
    signals.worker_init.connect(_worker_init, weak=False, dispatch_uid="steplens.ops.worker_init")
