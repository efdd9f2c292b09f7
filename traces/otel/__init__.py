"""OpenTelemetry for Steplens: GenAI span/metric helpers, and the process's provider set-up from the standard
OTEL_* variables (which lives in config.telemetry, below every app, and is re-exported here for callers above)."""

from config.telemetry import (
    Telemetry,
    build_telemetry,
    current_telemetry,
    telemetry_install,
    telemetry_reset,
    telemetry_setup,
)
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
