"""The state read at scrape (or export) time: the ingest backlog and lag, queue depths, runs in flight, pending
steps by age, and when each periodic task last ran.

These are gauges of the whole installation, read from the database and the broker when asked, never counted in
a process: on the Prometheus endpoint a custom collector (`StateCollector`) adds them to the counters and
histograms of config.metrics; over OTLP, observable gauges read them when the meter provider exports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connections
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ops.selectors import (
    IngestBacklog,
    PeriodicTaskState,
    ingest_backlog_get,
    periodic_tasks,
    queue_depths,
    runs_in_flight,
    steps_pending_by_age,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """One reading of everything the gauges show."""

    backlog: IngestBacklog
    queues: dict[str, int | None]
    runs: dict[str, int]
    pending_steps: dict[str, int]
    periodic: list[PeriodicTaskState]


def state_snapshot() -> StateSnapshot:
    return StateSnapshot(
        backlog=ingest_backlog_get(),
        queues=queue_depths(),
        runs=runs_in_flight(),
        pending_steps=steps_pending_by_age(),
        periodic=periodic_tasks(),
    )


def state_metric_families(snapshot: StateSnapshot | None) -> Iterator[GaugeMetricFamily]:
    """The Prometheus families of a snapshot; with None (the database did not answer) only steplens_state_up 0."""
    up = GaugeMetricFamily(
        "steplens_state_up", "1 when the state gauges below were read from the database and broker at this scrape."
    )
    up.add_metric([], 0 if snapshot is None else 1)
    yield up
    if snapshot is None:
        return
    backlog = snapshot.backlog
    yield GaugeMetricFamily(
        "steplens_ingest_backlog_batches", "OTLP batches accepted but not yet mapped.", value=backlog.batches
    )
    yield GaugeMetricFamily(
        "steplens_ingest_backlog_bytes", "Body bytes of the OTLP batches not yet mapped.", value=backlog.bytes
    )
    yield GaugeMetricFamily(
        "steplens_ingest_mapping_lag_seconds",
        "Age of the oldest OTLP batch not yet mapped (0 when none waits).",
        value=backlog.lag_seconds,
    )
    yield GaugeMetricFamily(
        "steplens_ingest_failed_batches",
        "OTLP batches whose mapping failed (kept for a retry).",
        value=backlog.failed_batches,
    )
    queues = GaugeMetricFamily(
        "steplens_celery_queue_depth", "Messages waiting in a Celery queue, from the broker.", labels=["queue"]
    )
    for queue, depth in sorted(snapshot.queues.items()):
        if depth is not None:
            queues.add_metric([queue], depth)
    yield queues
    runs = GaugeMetricFamily("steplens_runs_in_flight", "Agent runs not yet ended, by status.", labels=["status"])
    for status, n in sorted(snapshot.runs.items()):
        runs.add_metric([status], n)
    yield runs
    pending = GaugeMetricFamily(
        "steplens_steps_pending", "Steps still pending, by how long ago they started.", labels=["age"]
    )
    for age, n in snapshot.pending_steps.items():
        pending.add_metric([age], n)
    yield pending
    last_run = GaugeMetricFamily(
        "steplens_periodic_task_last_run_timestamp_seconds",
        "When a periodic task last finished (Unix time).",
        labels=["task"],
    )
    late = GaugeMetricFamily(
        "steplens_periodic_task_late",
        "1 when a periodic task is overdue (STEPLENS_OPS_PERIODIC_LATE_FACTOR).",
        labels=["task"],
    )
    for task in snapshot.periodic:
        if task.last_finished_at is not None:
            last_run.add_metric([task.task], task.last_finished_at.timestamp())
        late.add_metric([task.task], 1 if task.late else 0)
    yield last_run
    yield late


class StateCollector(Collector):
    """Prometheus collector reading the state at each scrape; a database or broker failure makes
    steplens_state_up 0 instead of failing the scrape (the process metrics still go out)."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            snapshot = state_snapshot()
        except Exception as exc:
            logger.warning("Metrics scrape: the state could not be read (%s)", type(exc).__name__)
            snapshot = None
        yield from state_metric_families(snapshot)


# --- OpenTelemetry: observable gauges ---------------------------------------------------------------------------

_SNAPSHOT_TTL_SECONDS = 5.0
_snapshot_lock = threading.Lock()
_snapshot: tuple[float, StateSnapshot | None] = (0.0, None)
_registered = False


def _cached_snapshot() -> StateSnapshot | None:
    """One reading per export, shared by every gauge's callback (OpenTelemetry calls them one by one). Runs on
    the exporter's thread: its database connection is closed afterwards, never left open per process."""
    global _snapshot
    with _snapshot_lock:
        taken_at, snapshot = _snapshot
        if time.monotonic() - taken_at < _SNAPSHOT_TTL_SECONDS:
            return snapshot
        try:
            snapshot = state_snapshot()
        except Exception as exc:
            logger.warning("OTLP metrics: the state could not be read (%s)", type(exc).__name__)
            snapshot = None
        finally:
            for connection in connections.all(initialized_only=True):
                if not connection.in_atomic_block:  # a caller's transaction (a test) is left alone
                    connection.close()
        _snapshot = (time.monotonic(), snapshot)
        return snapshot


def otel_gauges_register(*, meter_provider: Any = None) -> None:
    """Observable gauges for the state, on the global meter (exported when OTEL_* configured a meter provider;
    never read otherwise) or on `meter_provider`. Off with STEPLENS_OTEL_STATE_METRICS=false, e.g. on all but one
    host: every process that exports reads the state once per export interval."""
    global _registered
    if meter_provider is None:
        if _registered or not settings.STEPLENS_OTEL_STATE_METRICS:
            return
        _registered = True
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    meter = metrics.get_meter("steplens.state", meter_provider=meter_provider)

    def observe(read):
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            snapshot = _cached_snapshot()
            return [] if snapshot is None else [Observation(value, attrs) for value, attrs in read(snapshot)]

        return callback

    meter.create_observable_gauge(
        "steplens.ingest.backlog.batches",
        [observe(lambda s: [(s.backlog.batches, {})])],
        unit="{batch}",
        description="OTLP batches accepted but not yet mapped.",
    )
    meter.create_observable_gauge(
        "steplens.ingest.backlog.size",
        [observe(lambda s: [(s.backlog.bytes, {})])],
        unit="By",
        description="Body bytes of the OTLP batches not yet mapped.",
    )
    meter.create_observable_gauge(
        "steplens.ingest.mapping.lag",
        [observe(lambda s: [(s.backlog.lag_seconds, {})])],
        unit="s",
        description="Age of the oldest OTLP batch not yet mapped.",
    )
    meter.create_observable_gauge(
        "steplens.celery.queue.depth",
        [observe(lambda s: [(d, {"queue": q}) for q, d in s.queues.items() if d is not None])],
        unit="{message}",
        description="Messages waiting in a Celery queue.",
    )
    meter.create_observable_gauge(
        "steplens.runs.in_flight",
        [observe(lambda s: [(n, {"status": status}) for status, n in s.runs.items()])],
        unit="{run}",
        description="Agent runs not yet ended, by status.",
    )
    meter.create_observable_gauge(
        "steplens.steps.pending",
        [observe(lambda s: [(n, {"age": age}) for age, n in s.pending_steps.items()])],
        unit="{step}",
        description="Steps still pending, by age.",
    )
    meter.create_observable_gauge(
        "steplens.periodic_task.late",
        [observe(lambda s: [(1 if t.late else 0, {"task": t.task}) for t in s.periodic])],
        unit="1",
        description="1 when a periodic task is overdue.",
    )
