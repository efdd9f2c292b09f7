"""Writes for provider traces. Secrets are redacted here too, whatever the caller did."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accounts.models import Organization
from agents.providers.redaction import redact
from steps.models import Step
from traces.models import ProviderTrace

if TYPE_CHECKING:
    from traces.ingest.decode import OtlpSpan

_MAX_ERROR_MESSAGE = 10_000


@dataclass(slots=True)
class ProviderTraceIn:
    """One provider call as the caller saw it."""

    provider: str
    model: str = ""
    api: str = ""
    request_json: dict[str, Any] | None = None
    response_json: dict[str, Any] | None = None
    latency_ms: int | None = None
    error_type: str | None = None
    error_message: str | None = None


def provider_trace_record(*, step: Step, trace: ProviderTraceIn, attempt: int = 1) -> ProviderTrace:
    """Store (or, on a retried write, replace) the trace of one attempt of a step."""
    values = {
        "organization_id": step.organization_id,
        "provider": trace.provider,
        "api": trace.api,
        "model": trace.model or "",
        "request_json": redact(trace.request_json),
        "response_json": redact(trace.response_json),
        "latency_ms": trace.latency_ms,
        "error_type": trace.error_type,
        "error_message": (trace.error_message or "")[:_MAX_ERROR_MESSAGE] or None,
    }
    provider_trace, _ = ProviderTrace.objects.update_or_create(step=step, attempt=attempt, defaults=values)
    return provider_trace


def provider_trace_build(*, step: Step, trace: ProviderTraceIn, attempt: int = 1) -> ProviderTrace:
    """An unsaved ProviderTrace for `step`, redacted exactly as provider_trace_record redacts."""
    return ProviderTrace(
        organization_id=step.organization_id,
        step=step,
        attempt=attempt,
        provider=trace.provider[:64],
        api=(trace.api or "")[:32],
        model=(trace.model or "")[:200],
        request_json=redact(trace.request_json),
        response_json=redact(trace.response_json),
        latency_ms=trace.latency_ms,
        error_type=trace.error_type,
        error_message=(trace.error_message or "")[:_MAX_ERROR_MESSAGE] or None,
    )


def provider_traces_record_many(*, items: Sequence[tuple[Step, ProviderTraceIn]]) -> list[ProviderTrace]:
    """Store first-attempt traces of freshly inserted steps in one insert (the bulk ingest path)."""
    return ProviderTrace.objects.bulk_create([provider_trace_build(step=step, trace=trace) for step, trace in items])


# --- OTLP ingest ----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class IngestResult:
    """What an OTLP export request came to: spans accepted and rejected, and why some were rejected."""

    accepted: int
    rejected: int
    message: str
    steps_created: int = 0
    runs_created: int = 0


def trace_ingest(*, organization: Organization, spans: Sequence["OtlpSpan"]) -> IngestResult:
    """Map OTLP spans onto Runs, Steps, Messages and ProviderTraces of `organization`, in one transaction.

    LLM spans become finished or failed steps, `invoke_agent` spans runs (and agents), `execute_tool` spans tool
    timings and tool messages of the step that asked for them. Other spans are accepted and ignored. A span that
    cannot be used is counted as rejected with a reason; the rest is stored. Idempotent on (trace_id, span_id):
    sending the same spans again creates nothing. Returns only after the transaction committed.
    """
    # Imported here: steps.services imports this module for ProviderTraceIn.
    from traces.ingest.writer import ingest_spans

    return ingest_spans(organization=organization, spans=spans)
