"""What the agent loop imports (`from traces import telemetry`): the GenAI span helpers and the setup.

The implementation lives in traces/otel/ (setup.py: providers from OTEL_*; genai.py: spans and metrics).
"""

from traces.otel import (
    FIRST_CHUNK_EVENT,
    ChatSpan,
    Telemetry,
    ToolSpan,
    build_telemetry,
    chat_span,
    current_telemetry,
    current_trace_ids,
    record_error,
    run_span,
    telemetry_install,
    telemetry_reset,
    telemetry_setup,
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
