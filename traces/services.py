"""Writes for provider traces. Secrets are redacted here too, whatever the caller did."""

from dataclasses import dataclass
from typing import Any

from agents.providers.redaction import redact
from steps.models import Step
from traces.models import ProviderTrace

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
