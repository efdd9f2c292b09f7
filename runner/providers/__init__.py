"""Provider adapters: OpenAI Chat Completions, OpenAI Responses, Anthropic, Gemini and the scripted provider.

Use `get_adapter(model_handle)` to get an adapter and the provider's model name, then
`adapter.stream(LLMRequest(...), cancel_event=CancelEvent())`: iterate the returned `ProviderCall` for
`StreamChunk`s; afterwards `call.result` is the `LLMResult` (or iteration raised a `ProviderError`)
and `call.trace` the redacted `ProviderTraceData`.
"""

from config.redaction import redact, redact_headers, redact_text
from runner.providers.base import (
    APIS,
    CancelEvent,
    LLMRequest,
    LLMResult,
    ProviderAdapter,
    ProviderCall,
    ProviderTraceData,
    StreamChunk,
    ToolSpec,
)
from runner.providers.errors import (
    ERROR_TYPES,
    RETRYABLE_ERROR_TYPES,
    ProviderCancelled,
    ProviderError,
)
from runner.providers.images import ImageFetcher, ImageFetchError
from runner.providers.registry import UnknownModelHandle, get_adapter, parse_model_handle
from runner.providers.replay import parse_recorded_response
from runner.providers.scripted import (
    RecordedTurn,
    Scenario,
    ScriptedAdapter,
    get_scenario,
    register_scenario,
    scenario_names,
    tool_for_question,
    tool_turns,
    unregister_scenario,
)
from runner.providers.transport import InMemoryTransport, WireResponse
from runner.providers.wire import ErrorSpec, ToolCallSpec, Turn, TurnUsage, synthesize

__all__ = [
    "APIS",
    "ERROR_TYPES",
    "RETRYABLE_ERROR_TYPES",
    "CancelEvent",
    "ErrorSpec",
    "ImageFetchError",
    "ImageFetcher",
    "InMemoryTransport",
    "LLMRequest",
    "LLMResult",
    "ProviderAdapter",
    "ProviderCall",
    "ProviderCancelled",
    "ProviderError",
    "ProviderTraceData",
    "RecordedTurn",
    "Scenario",
    "ScriptedAdapter",
    "StreamChunk",
    "ToolCallSpec",
    "ToolSpec",
    "Turn",
    "TurnUsage",
    "UnknownModelHandle",
    "WireResponse",
    "get_adapter",
    "get_scenario",
    "parse_model_handle",
    "parse_recorded_response",
    "redact",
    "redact_headers",
    "redact_text",
    "register_scenario",
    "scenario_names",
    "synthesize",
    "tool_for_question",
    "tool_turns",
    "unregister_scenario",
]
