"""Reads of Steplens's own state: ingest backlog and lag, queue depths, runs in flight, pending steps, periodic
tasks, Celery workers, database size, and the warnings the console's banner shows.

Every read is bounded: aggregates over indexed rows (the pending-batch and step status indexes), one passive
queue declaration per queue with a short timeout, one broadcast to the workers with a short timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from agents.models import Run, RunStatus
from config.celery import Queue
from config.redaction import redact
from ops.models import PeriodicTaskRun
from steps.models import Step, StepStatus
from traces.models import PENDING_BATCH_STATUSES, IngestBatch, IngestBatchStatus

logger = logging.getLogger(__name__)

RUN_IN_FLIGHT_STATUSES = (RunStatus.CREATED, RunStatus.RUNNING, RunStatus.PAUSED)
# Pending steps by how long ago they started: (label, lower bound in seconds). A step pending for longer than a
# run can last is stuck (the sweep fails it after STEPLENS_STALE_STEP_SECONDS).
PENDING_AGE_BUCKETS = (("lt_1m", 0), ("1m_5m", 60), ("5m_15m", 300), ("15m_1h", 900), ("gt_1h", 3600))


# --- ingest -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngestBacklog:
    """Accepted OTLP batches not yet mapped, and how far behind mapping is."""

    batches: int
    bytes: int
    oldest_received_at: datetime | None
    lag_seconds: float
    failed_batches: int


def ingest_backlog_get(*, now: datetime | None = None) -> IngestBacklog:
    """The backlog (queued or processing batches), their body bytes, and the mapping lag: the age of the oldest
    batch not yet mapped (0 when none waits). Failed batches are counted apart: they wait for a person."""
    now = now or timezone.now()
    totals = IngestBatch.objects.filter(status__in=PENDING_BATCH_STATUSES).aggregate(
        n=Count("id"), b=Sum("body_bytes"), oldest=Min("received_at")
    )
    failed = IngestBatch.objects.filter(status=IngestBatchStatus.FAILED).count()
    oldest = totals["oldest"]
    lag = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
    return IngestBacklog(
        batches=totals["n"] or 0,
        bytes=totals["b"] or 0,
        oldest_received_at=oldest,
        lag_seconds=lag,
        failed_batches=failed,
    )


# --- runs and steps ---------------------------------------------------------------------------------------------


def runs_in_flight() -> dict[str, int]:
    """Runs not yet ended, by status (created, running, paused), every status present (0 when none)."""
    counts = dict.fromkeys((str(status) for status in RUN_IN_FLIGHT_STATUSES), 0)
    rows = Run.objects.filter(status__in=RUN_IN_FLIGHT_STATUSES).values_list("status").annotate(n=Count("id"))
    for status, n in rows:
        counts[status] = n
    return counts


def steps_pending_by_age(*, now: datetime | None = None) -> dict[str, int]:
    """Pending steps by age bucket (PENDING_AGE_BUCKETS), in one aggregate over the status index."""
    now = now or timezone.now()
    bounds = [(label, now - timedelta(seconds=low)) for label, low in PENDING_AGE_BUCKETS]
    aggregates = {}
    for i, (label, newest) in enumerate(bounds):
        condition = Q(created_at__lte=newest)
        if i + 1 < len(bounds):
            condition &= Q(created_at__gt=bounds[i + 1][1])
        aggregates[label] = Count("id", filter=condition)
    return Step.objects.filter(status=StepStatus.PENDING).aggregate(**aggregates)


# --- Celery: queues, workers, periodic tasks --------------------------------------------------------------------


def broker_url() -> str | None:
    """The broker tasks go through, or None in embedded mode (tasks run in process, nothing is queued)."""
    url = settings.CELERY_BROKER_URL or ""
    if settings.CELERY_TASK_ALWAYS_EAGER or url.startswith("memory://"):
        return None
    return url


def _timeout() -> float:
    return float(settings.STEPLENS_OPS_CHECK_TIMEOUT_SECONDS)


def queue_depths(*, queues: Iterable[str] | None = None) -> dict[str, int | None]:
    """Messages waiting in each Celery queue (config.celery.Queue), from the broker: the list length on Redis, a
    passive queue declaration on RabbitMQ (a queue not declared yet holds nothing: 0). None for a queue the
    broker did not answer about within STEPLENS_OPS_CHECK_TIMEOUT_SECONDS. Empty in embedded mode."""
    url = broker_url()
    if url is None:
        return {}
    names = list(queues) if queues is not None else [str(queue) for queue in Queue]
    if url.startswith(("redis://", "rediss://", "unix://")):
        return _redis_queue_depths(url, names)
    return _amqp_queue_depths(url, names)


def _redis_queue_depths(url: str, names: list[str]) -> dict[str, int | None]:
    from ops.readiness import redis_client

    try:
        client = redis_client(url)
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.llen(name)
        return dict(zip(names, pipe.execute(), strict=True))
    except Exception as exc:
        logger.warning("Queue depths: Redis broker did not answer (%s)", type(exc).__name__)
        return dict.fromkeys(names)


def _amqp_queue_depths(url: str, names: list[str]) -> dict[str, int | None]:
    from amqp.exceptions import NotFound
    from kombu import Connection

    depths: dict[str, int | None] = dict.fromkeys(names)
    try:
        with Connection(url, connect_timeout=_timeout(), transport_options={"read_timeout": _timeout()}) as conn:
            conn.connect()
            for name in names:
                channel = conn.channel()
                try:
                    depths[name] = channel.queue_declare(queue=name, passive=True).message_count
                except NotFound:
                    depths[name] = 0  # passive declare closed this channel; the next queue opens another
                finally:
                    with contextlib.suppress(Exception):  # already closed by the broker
                        channel.close()
    except Exception as exc:
        logger.warning("Queue depths: the broker did not answer (%s)", type(exc).__name__)
    return depths


@dataclass(slots=True)
class WorkerState:
    """A Celery worker that answered, and the tasks it is executing now."""

    name: str
    active: list[dict[str, Any]] = field(default_factory=list)


def workers_active() -> list[WorkerState] | None:
    """The Celery workers that answer a broadcast within STEPLENS_OPS_CHECK_TIMEOUT_SECONDS, each with its running
    tasks (name, id, since, and the task's arguments, redacted). None in embedded mode (no workers) or when the
    broker cannot be reached."""
    if broker_url() is None:
        return None
    from config.celery import app

    try:
        replies = app.control.inspect(timeout=_timeout()).active() or {}
    except Exception as exc:
        logger.warning("Workers: the broadcast failed (%s)", type(exc).__name__)
        return None
    workers = []
    for name, tasks in sorted(replies.items()):
        active = [
            {
                "name": task.get("name") or task.get("type"),
                "id": task.get("id"),
                "started": datetime.fromtimestamp(task["time_start"], tz=timezone.get_current_timezone())
                if task.get("time_start")
                else None,
                "kwargs": redact(task.get("kwargs") or {}),
                "pid": task.get("worker_pid"),
            }
            for task in tasks or []
        ]
        workers.append(WorkerState(name=name, active=active))
    return workers


@dataclass(frozen=True, slots=True)
class PeriodicTaskState:
    """A task of CELERY_BEAT_SCHEDULE: how often it should run, when it last did, and whether it is late."""

    entry: str
    task: str
    every_seconds: float | None
    last_finished_at: datetime | None
    last_outcome: str
    last_rows: int | None
    seconds_since: float | None
    late: bool


def _every_seconds(schedule: Any) -> float | None:
    if isinstance(schedule, int | float):
        return float(schedule)
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    run_every = getattr(schedule, "run_every", None)  # celery.schedules.schedule
    return run_every.total_seconds() if isinstance(run_every, timedelta) else None


def periodic_tasks(*, now: datetime | None = None) -> list[PeriodicTaskState]:
    """Each periodic task with its last run (written by the workers, ops.signals). Late: it ran before and its last
    run finished more than STEPLENS_OPS_PERIODIC_LATE_FACTOR periods (and at least a minute) ago, which means beat
    or the workers of its queue are not doing their job. A task that never ran is not late (a fresh install, or
    the embedded mode, which runs no beat) but the page shows it."""
    now = now or timezone.now()
    schedule: Mapping[str, Mapping[str, Any]] = getattr(settings, "CELERY_BEAT_SCHEDULE", {}) or {}
    last = {row.task: row for row in PeriodicTaskRun.objects.filter(task__in=[e["task"] for e in schedule.values()])}
    factor = float(settings.STEPLENS_OPS_PERIODIC_LATE_FACTOR)
    states = []
    for entry, spec in sorted(schedule.items()):
        every = _every_seconds(spec.get("schedule"))
        row = last.get(spec["task"])
        finished = row.last_finished_at if row else None
        since = (now - finished).total_seconds() if finished else None
        late = since is not None and every is not None and since > max(60.0, every * factor)
        states.append(
            PeriodicTaskState(
                entry=entry,
                task=spec["task"],
                every_seconds=every,
                last_finished_at=finished,
                last_outcome=row.last_outcome if row else "",
                last_rows=row.last_rows if row else None,
                seconds_since=since,
                late=late,
            )
        )
    return states


# --- database ---------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class DatabaseOverview:
    """The size of the database, its largest tables, and the partitioned tables with their partitions."""

    vendor: str
    size_bytes: int | None
    tables: list[dict[str, Any]] = field(default_factory=list)
    partitioned: list[dict[str, Any]] = field(default_factory=list)


_PG_TABLES = """
SELECT c.relname, pg_total_relation_size(c.oid), c.reltuples::bigint, c.relkind = 'p'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema() AND NOT c.relispartition
ORDER BY 2 DESC LIMIT %s
"""
# A partitioned table's own size is 0: its partitions hold the rows.
_PG_PARTITIONS = """
SELECT parent.relname, count(*), coalesce(sum(pg_total_relation_size(child.oid)), 0),
       min(child.relname), max(child.relname)
FROM pg_inherits i
JOIN pg_class parent ON parent.oid = i.inhparent
JOIN pg_class child ON child.oid = i.inhrelid
JOIN pg_namespace n ON n.oid = parent.relnamespace
WHERE n.nspname = current_schema()
GROUP BY parent.relname ORDER BY 3 DESC
"""


def database_overview(*, largest: int = 10) -> DatabaseOverview:
    """Size and largest tables (PostgreSQL: catalog sizes, partitions summed per parent; SQLite: the file)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            (size,) = cursor.fetchone()
            cursor.execute(_PG_PARTITIONS)
            partitioned = [
                {"table": name, "partitions": n, "bytes": int(total), "first": first, "last": last}
                for name, n, total, first, last in cursor.fetchall()
            ]
            sizes = {row["table"]: row["bytes"] for row in partitioned}
            cursor.execute(_PG_TABLES, [largest])
            tables = [
                {"table": name, "bytes": int(total) + sizes.get(name, 0), "rows": max(0, rows), "partitioned": p}
                for name, total, rows, p in cursor.fetchall()
            ]
        tables.sort(key=lambda row: -row["bytes"])
        return DatabaseOverview(vendor="postgresql", size_bytes=int(size), tables=tables, partitioned=partitioned)
    name = connection.settings_dict.get("NAME")
    size = os.path.getsize(name) if name and os.path.isfile(str(name)) else None
    return DatabaseOverview(vendor=connection.vendor, size_bytes=size)


# --- warnings ---------------------------------------------------------------------------------------------------


def system_warnings(
    *, backlog: IngestBacklog, depths: Mapping[str, int | None], periodic: Iterable[PeriodicTaskState]
) -> list[str]:
    """The sentences of the console's warning banner: mapping lag, a queue depth or a late periodic task over its
    threshold (STEPLENS_OPS_WARN_MAPPING_LAG_SECONDS, STEPLENS_OPS_WARN_QUEUE_DEPTH,
    STEPLENS_OPS_PERIODIC_LATE_FACTOR)."""
    warnings = []
    lag_limit = settings.STEPLENS_OPS_WARN_MAPPING_LAG_SECONDS
    if lag_limit and backlog.lag_seconds > lag_limit:
        warnings.append(
            f"Ingest is {backlog.lag_seconds / 60:.1f} minutes behind: {backlog.batches} batch(es) wait to be mapped "
            f"(threshold {lag_limit} s). Are the ingest workers running?"
        )
    depth_limit = settings.STEPLENS_OPS_WARN_QUEUE_DEPTH
    for queue, depth in sorted(depths.items()):
        if depth_limit and depth is not None and depth > depth_limit:
            warnings.append(f"Celery queue '{queue}' holds {depth} messages (threshold {depth_limit}).")
    for task in periodic:
        if task.late:
            warnings.append(
                f"Periodic task {task.task} last ran {task.seconds_since / 60:.1f} minutes ago "
                f"(every {task.every_seconds:.0f} s). Is celery beat running?"
            )
    return warnings


_BANNER_KEY = "steplens:ops:banner"


def system_banner() -> list[str]:
    """system_warnings for the banner of every console page, computed at most once per
    STEPLENS_OPS_BANNER_CACHE_SECONDS (shared through the cache) so a page view costs a cache read."""
    cached = cache.get(_BANNER_KEY)
    if cached is not None:
        return cached
    try:
        warnings = system_warnings(backlog=ingest_backlog_get(), depths=queue_depths(), periodic=periodic_tasks())
    except Exception:
        logger.warning("The system banner could not be computed", exc_info=True)
        warnings = []
    cache.set(_BANNER_KEY, warnings, timeout=settings.STEPLENS_OPS_BANNER_CACHE_SECONDS)
    return warnings
