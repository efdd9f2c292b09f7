"""OpenTelemetry for Steplens: provider setup from the standard OTEL_* variables and GenAI span/metric helpers."""

from traces.otel.genai import (
    FIRST_CHUNK_EVENT,
    ChatSpan,
    ToolSpan,
    chat_span,
    current_trace_ids,
    record_error,
    run_span,
    tool_span,
    trace_url,
)
from traces.otel.setup import (
    Telemetry,
    build_telemetry,
    current_telemetry,
    telemetry_install,
    telemetry_reset,
    telemetry_setup,
)

__all__ = [
    "FIRST_CHUNK_EVENT",
    "ChatSpan",
    "Telemetry",
    "ToolSpan",
    "build_telemetry",
    "chat_span",
    "current_telemetry",
    "current_trace_ids",
    "record_error",
    "run_span",
    "telemetry_install",
    "telemetry_reset",
    "telemetry_setup",
    "tool_span",
    "trace_url",
]
