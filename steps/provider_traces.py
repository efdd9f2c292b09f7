"""Provider traces: what a step's provider call stores (the request and response, secrets redacted, cut to
STEPLENS_PROVIDER_TRACE_MAX_BYTES), whichever path records the step.

`provider_trace_values` is the one rule for a row's values; the per-step path upserts one row
(`provider_trace_record`), the bulk path inserts many (`provider_traces_record_many`, or COPY rows from
`provider_trace_copy_rows` on PostgreSQL).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings

from config.redaction import redact
from steps.models import ProviderTrace, Step
from steps.truncation import Truncated, json_truncate

_MAX_ERROR_MESSAGE = 10_000
_KEY = {"step_id", "attempt", "step_created_at"}


@dataclass(slots=True)
class ProviderTraceIn:
    """One provider call as the caller saw it."""

    provider: str
    model: str = ""
    api: str = ""
    # A Truncated is what provider_trace_json already made of the value (redacted and cut): stored as is.
    request_json: dict[str, Any] | Truncated | None = None
    response_json: dict[str, Any] | Truncated | None = None
    latency_ms: int | None = None
    error_type: str | None = None
    error_message: str | None = None


def provider_trace_json(value: Any) -> Truncated:
    """What a ProviderTrace stores for a request or response: redacted, then cut visibly to
    STEPLENS_PROVIDER_TRACE_MAX_BYTES (still valid JSON). The one rule for every write path."""
    return json_truncate(redact(value), max_bytes=settings.STEPLENS_PROVIDER_TRACE_MAX_BYTES)


def _stored_json(value: dict[str, Any] | Truncated | None) -> Any:
    return value.value if isinstance(value, Truncated) else provider_trace_json(value).value


def provider_trace_values(*, step: Step, trace: ProviderTraceIn) -> dict[str, Any]:
    """The stored values (by attname, created_at aside) of the trace of `step`'s attempt: redacted, cut and
    clipped to the columns. Every write path stores exactly these."""
    return {
        "organization_id": step.organization_id,
        "step_id": step.pk,
        "step_created_at": step.created_at,
        "attempt": step.attempt,
        "provider": trace.provider[:64],
        "api": (trace.api or "")[:32],
        "model": (trace.model or "")[:200],
        "request_json": _stored_json(trace.request_json),
        "response_json": _stored_json(trace.response_json),
        "latency_ms": trace.latency_ms,
        "error_type": trace.error_type,
        "error_message": (trace.error_message or "")[:_MAX_ERROR_MESSAGE] or None,
    }


def provider_trace_build(*, step: Step, trace: ProviderTraceIn) -> ProviderTrace:
    """An unsaved ProviderTrace of `step`'s attempt, with provider_trace_values."""
    return ProviderTrace(**provider_trace_values(step=step, trace=trace))


def provider_trace_record(*, step: Step, trace: ProviderTraceIn) -> ProviderTrace:
    """Store (or, on a retried write, replace) the trace of `step`'s attempt."""
    values = provider_trace_values(step=step, trace=trace)
    # One upsert statement: a retried write replaces the attempt's trace instead of reading first.
    (provider_trace,) = ProviderTrace.objects.bulk_create(
        [ProviderTrace(**values)],
        update_conflicts=True,
        unique_fields=["step", "attempt", "step_created_at"],
        update_fields=[name for name in values if name not in _KEY],
    )
    return provider_trace


def provider_traces_record_many(*, items: Sequence[tuple[Step, ProviderTraceIn]]) -> list[ProviderTrace]:
    """Store the traces of freshly inserted steps in one insert (the bulk path where COPY is not available)."""
    return ProviderTrace.objects.bulk_create([provider_trace_build(step=step, trace=trace) for step, trace in items])


PROVIDER_TRACE_COPY_COLUMNS = (
    "organization_id", "step_id", "attempt", "provider", "api", "model", "request_json", "response_json",
    "latency_ms", "error_type", "error_message", "created_at", "step_created_at",
)  # fmt: skip
_JSON_COLUMNS = {"request_json", "response_json"}


def provider_trace_copy_rows(*, items: Sequence[tuple[Step, ProviderTraceIn]], created_at: datetime) -> list[tuple]:
    """The traces of fresh steps as rows for COPY (PROVIDER_TRACE_COPY_COLUMNS, JSON as text), with
    provider_trace_values."""
    rows = []
    for step, trace in items:
        values = {**provider_trace_values(step=step, trace=trace), "created_at": created_at}
        for name in _JSON_COLUMNS:
            values[name] = None if values[name] is None else json.dumps(values[name])
        rows.append(tuple(values[name] for name in PROVIDER_TRACE_COPY_COLUMNS))
    return rows
