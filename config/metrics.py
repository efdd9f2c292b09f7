"""Steplens's own metrics: the instruments every process records into, written two ways at once.

1. **prometheus-client**, served by `GET /metrics` (ops.views). With `PROMETHEUS_MULTIPROC_DIR` set (it must be in
   the environment before the process starts: prometheus-client reads it at import), every gunicorn worker and
   every Celery prefork child writes its counters and histograms to its own files in that directory and the scrape
   sums them, so one scrape of any web worker on a host shows the whole host (web and workers sharing the
   directory). Without it, the scrape shows the answering process only (fine for `runserver` and the embedded mode).
   Files of processes that no longer exist are pruned when gunicorn or a Celery worker starts
   (`multiprocess_dir_prune`); the directory itself is the operator's (README, "Operating Steplens").
2. **OpenTelemetry metrics API** (`opentelemetry.metrics.get_meter`): exported by whatever MeterProvider the
   standard `OTEL_*` variables installed (config telemetry set-up), and a no-op when there is none.

Names, units and attributes follow the OpenTelemetry semantic conventions where one exists
(`http.server.request.duration`, seconds, with `http.request.method`, `http.route`, `http.response.status_code`)
and are `steplens.*` otherwise; the Prometheus names are the conventional translation (dots to underscores,
`_seconds`/`_bytes` unit suffixes, `_total` on counters). The state read at scrape time (backlog, lag, queue depths,
runs in flight, pending steps, periodic tasks) is not here: it is collected from the database and the broker by
`ops.collectors`, which sits above the apps it reads.

This module imports nothing from the apps: every app, low or high, may record into it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable

from opentelemetry import metrics as otel_metrics
from prometheus_client import CollectorRegistry, Counter, Histogram

from config.telemetry import Telemetry, current_telemetry

logger = logging.getLogger(__name__)

METER_NAME = "steplens"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Bucket boundaries the OpenTelemetry HTTP semantic conventions advise for http.server.request.duration.
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# The GenAI conventions' boundaries for gen_ai.client.operation.duration (provider calls last seconds, not ms).
PROVIDER_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TASK_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

# One registry of our own (not prometheus-client's global one): what /metrics serves when there is no
# multiprocess directory, and never the default process/platform collectors twice.
REGISTRY = CollectorRegistry(auto_describe=True)

_http_duration = Histogram(
    "http_server_request_duration_seconds",
    "Duration of HTTP server requests.",
    ["http_request_method", "http_route", "http_response_status_code"],
    buckets=HTTP_DURATION_BUCKETS,
    registry=REGISTRY,
)
_spans_accepted = Counter(
    "steplens_ingest_spans_accepted", "OTLP spans accepted by POST /v1/traces (stored for mapping).", registry=REGISTRY
)
_spans_rejected = Counter(
    "steplens_ingest_spans_rejected",
    "OTLP spans rejected, by reason (at accept time or by mapping).",
    ["reason"],
    registry=REGISTRY,
)
_requests_rejected = Counter(
    "steplens_ingest_requests_rejected",
    "OTLP export requests refused whole by POST /v1/traces, by reason.",
    ["reason"],
    registry=REGISTRY,
)
_spans_mapped = Counter(
    "steplens_ingest_spans_mapped", "OTLP spans mapped onto runs and steps by the ingest workers.", registry=REGISTRY
)
_provider_duration = Histogram(
    "steplens_provider_call_duration_seconds",
    "Duration of the provider calls Steplens's agent runs make, by provider, model and error type ('' = success).",
    ["gen_ai_provider_name", "gen_ai_request_model", "error_type"],
    buckets=PROVIDER_DURATION_BUCKETS,
    registry=REGISTRY,
)
_task_duration = Histogram(
    "steplens_task_duration_seconds",
    "Duration of Celery task executions (runs, ingest mapping, sweeps, retention and deletion jobs), by outcome.",
    ["task", "outcome"],
    buckets=TASK_DURATION_BUCKETS,
    registry=REGISTRY,
)
_job_rows = Counter(
    "steplens_job_rows",
    "Rows a sweep, retention or deletion job reported handling (its return value), by task.",
    ["task"],
    registry=REGISTRY,
)


class _Otel:
    """The OpenTelemetry instruments, made from the meter provider of the installed Telemetry (config.telemetry;
    the global one, a no-op until OTEL_* configured an exporter) and made again when another is installed."""

    def __init__(self, meter: otel_metrics.Meter) -> None:
        self.http_duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(HTTP_DURATION_BUCKETS),
        )
        self.spans_accepted = meter.create_counter(
            "steplens.ingest.spans.accepted", unit="{span}", description="OTLP spans accepted."
        )
        self.spans_rejected = meter.create_counter(
            "steplens.ingest.spans.rejected", unit="{span}", description="OTLP spans rejected, by reason."
        )
        self.requests_rejected = meter.create_counter(
            "steplens.ingest.requests.rejected", unit="{request}", description="OTLP requests refused, by reason."
        )
        self.spans_mapped = meter.create_counter(
            "steplens.ingest.spans.mapped", unit="{span}", description="OTLP spans mapped onto steps."
        )
        self.provider_duration = meter.create_histogram(
            "steplens.provider.call.duration",
            unit="s",
            description="Duration of provider calls made by agent runs.",
            explicit_bucket_boundaries_advisory=list(PROVIDER_DURATION_BUCKETS),
        )
        self.task_duration = meter.create_histogram(
            "steplens.task.duration",
            unit="s",
            description="Duration of Celery task executions, by outcome.",
            explicit_bucket_boundaries_advisory=list(TASK_DURATION_BUCKETS),
        )
        self.job_rows = meter.create_counter(
            "steplens.job.rows", unit="{row}", description="Rows handled by sweeps, retention and deletion jobs."
        )


_otel: tuple[Telemetry, _Otel] | None = None


def _instruments() -> _Otel:
    global _otel
    telemetry = current_telemetry()
    if _otel is None or _otel[0] is not telemetry:
        _otel = (telemetry, _Otel(otel_metrics.get_meter(METER_NAME, meter_provider=telemetry.meter_provider)))
    return _otel[1]


# --- recording: each function is safe to call from any process and costs a few microseconds ---------------------


def http_request_record(*, method: str, route: str, status: int, duration_s: float) -> None:
    """One HTTP request answered. `route` is the URL pattern (`/v1/steps/<str:step_id>`), never the raw path,
    so the series stay few; '' for a path no route matched. Called by config.middleware.RequestMetricsMiddleware."""
    _http_duration.labels(method, route, str(status)).observe(duration_s)
    attributes = {"http.request.method": method, "http.response.status_code": status}
    if route:
        attributes["http.route"] = route
    _instruments().http_duration.record(duration_s, attributes)


def ingest_spans_accepted_record(*, accepted: int, rejected: int, reason: str = "invalid_span") -> None:
    """An export request stored: `accepted` spans kept for mapping, `rejected` refused by the accept-time checks
    (bad ids, times, token counts). Called by traces.api.views.OtlpTracesApi after trace_batch_accept."""
    if accepted:
        _spans_accepted.inc(accepted)
        _instruments().spans_accepted.add(accepted)
    if rejected:
        ingest_spans_rejected_record(rejected=rejected, reason=reason)


def ingest_spans_rejected_record(*, rejected: int, reason: str) -> None:
    """Spans refused, with a short stable reason: `invalid_span` (accept-time checks, by the ingest view) or
    `mapping` (refused when a worker mapped the batch, by traces.services after the mapping committed)."""
    _spans_rejected.labels(reason).inc(rejected)
    _instruments().spans_rejected.add(rejected, {"reason": reason})


def ingest_request_rejected_record(*, reason: str) -> None:
    """An export request refused whole: `bad_request`, `payload_too_large`, `unsupported_media_type`,
    `saturated`, `backlog_full`, `database_unavailable`. Called by traces.api.views.OtlpTracesApi."""
    _requests_rejected.labels(reason).inc()
    _instruments().requests_rejected.add(1, {"reason": reason})


def ingest_spans_mapped_record(*, mapped: int) -> None:
    """Spans a worker mapped onto runs and steps; called by traces.services once the mapping has committed."""
    if mapped:
        _spans_mapped.inc(mapped)
        _instruments().spans_mapped.add(mapped)


def provider_call_record(*, provider: str, model: str, error_type: str | None, duration_s: float) -> None:
    """One provider call of an agent run (each attempt), `error_type` None on success. Called by the loop's
    provider call (runner.loop.step._call_provider) once the attempt's stream has ended or failed."""
    _provider_duration.labels(provider, model, error_type or "").observe(duration_s)
    attributes = {"gen_ai.provider.name": provider, "gen_ai.request.model": model}
    if error_type:
        attributes["error.type"] = error_type
    _instruments().provider_duration.record(duration_s, attributes)


def task_record(*, task: str, outcome: str, duration_s: float, rows: int | None = None) -> None:
    """One Celery task execution (`outcome`: success, failure, retry), and the rows it reported handling. Called
    for every task from Celery's task_prerun/task_postrun signals (ops.signals)."""
    _task_duration.labels(task, outcome).observe(duration_s)
    _instruments().task_duration.record(duration_s, {"task": task, "outcome": outcome})
    if rows:
        _job_rows.labels(task).inc(rows)
        _instruments().job_rows.add(rows, {"task": task})


def rows_from_result(result: object) -> int | None:
    """The rows a job reports: an int, or the sum of a dict of ints ({"requeued": 2, "purged": 10})."""
    if isinstance(result, bool):
        return None
    if isinstance(result, int):
        return result
    if isinstance(result, dict):
        values = [value for value in result.values() if isinstance(value, int) and not isinstance(value, bool)]
        return sum(values) if values else None
    return None


# --- multiprocess directory -----------------------------------------------------------------------------------------

_FILE_PID = re.compile(r"_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The directory every process of this host writes its metrics to, or None (single-process mode)."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def multiprocess_dir_prune(*, keep: Iterable[int] = ()) -> int:
    """Delete the metric files of processes that no longer exist (their counters leave the sums: Prometheus sees
    a counter reset, which rate() handles); returns how many. gunicorn calls it when it starts, Celery when a
    worker starts: the directory holds one set of files per process ever started, so it would otherwise grow
    with every restart and every recycled worker child."""
    directory = multiprocess_dir()
    if not directory or not os.path.isdir(directory):
        return 0
    kept, removed = set(keep), 0
    for path in glob.glob(os.path.join(directory, "*.db")):
        match = _FILE_PID.search(path)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid in kept or _alive(pid):
            continue
        try:
            os.remove(path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def multiprocess_mark_dead(pid: int) -> None:
    """A worker process exited: drop its live-gauge files (gunicorn's child_exit hook). Its counters stay in the
    sums until the next prune."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
