"""Run a recorded provider response body through the same adapter code as a live call.

`parse_recorded_response` serves the body from an in-memory transport to the real SDK client of the
adapter for `api`, so a capture is read exactly as production would read it.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from runner.providers.base import APIS, BaseAdapter, LLMRequest, LLMResult
from runner.providers.errors import malformed
from runner.providers.transport import InMemoryTransport, WireResponse
from steps.values import MessageIn, TextContent

logger = logging.getLogger(__name__)

_ANTHROPIC_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_OPENAI_STATUS = {
    "invalid_api_key": 401,
    "insufficient_quota": 429,
    "rate_limit_exceeded": 429,
    "model_not_found": 404,
    "server_error": 500,
    "authentication_error": 401,
    "permission_error": 403,
}


def adapter_for_api(api: str, **options: Any) -> BaseAdapter:
    """A bare adapter for one of the four APIs (no key lookup; used with a given transport)."""
    from runner.providers.anthropic import AnthropicAdapter
    from runner.providers.google import GoogleAdapter
    from runner.providers.openai_chat import OpenAIChatAdapter
    from runner.providers.openai_responses import OpenAIResponsesAdapter

    classes: dict[str, type[BaseAdapter]] = {
        "openai_chat": OpenAIChatAdapter,
        "openai_responses": OpenAIResponsesAdapter,
        "anthropic": AnthropicAdapter,
        "google": GoogleAdapter,
    }
    if api not in classes:
        raise ValueError(f"Unknown API {api!r}; expected one of {', '.join(APIS)}.")
    return classes[api](**options)


_warmed: set[str] = set()
_warm_lock = threading.Lock()


def warm_up(api: str) -> None:
    """Run one synthesized response through `api`'s SDK path, once per process.

    The SDKs build their pydantic models and import resources on first use (hundreds of ms for the
    Responses event union); paying that here keeps it out of the first real call's TTFT.
    """
    if api in _warmed:
        return
    with _warm_lock:
        if api in _warmed:
            return
        _warmed.add(api)
    from runner.providers.wire import ToolCallSpec, Turn, synthesize

    turn = Turn(text="warm", reasoning="warm", tool_calls=[ToolCallSpec(name="warm", arguments={"a": 1})])
    wire = synthesize(api=api, turn=turn, model="warm-up")
    adapter = adapter_for_api(api, api_key="warm-up", transport=InMemoryTransport(wire))
    request = LLMRequest(model="warm-up", messages=[MessageIn(role="user", content=[TextContent(text="warm")])])
    # Not an LLM call anyone made: whatever instrumentation is installed (an SDK's own spans, HTTP client
    # spans) must not record it, or a backend counting LLM spans would count a fake call per process and API.
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    try:
        with suppress_instrumentation():
            adapter.stream(request).run()
    except Exception:  # a failed warm-up only costs the first call its speed
        logger.debug("warm-up of %s failed", api, exc_info=True)


def error_status(body: Any) -> int | None:
    """The HTTP status an error envelope stands for, or None when `body` is not an error envelope."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    if any(key in body for key in ("choices", "candidates", "output", "content")):
        return None
    err = body["error"]
    code = err.get("code")
    if isinstance(code, int) and 400 <= code < 600:
        return code  # Google puts the HTTP status in error.code
    for key in (err.get("type"), code):
        if isinstance(key, str):
            if key in _ANTHROPIC_STATUS:
                return _ANTHROPIC_STATUS[key]
            if key in _OPENAI_STATUS:
                return _OPENAI_STATUS[key]
    return 400


def _gemini_array_to_sse(chunks: list[Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in chunks)


def parse_recorded_response(
    api: str, body: bytes, *, streaming: bool | None = None, status_code: int = 200
) -> LLMResult:
    """The LLMResult the adapter for `api` produces from a recorded response body.

    `streaming=None` decides from the body (JSON object → non-streaming call, anything else → SSE).
    An error body (status >= 400, or a JSON error envelope whose status is then inferred from its
    type/code) raises the typed `ProviderError`; a body that is not a valid response raises
    `ProviderError` with error_type `malformed_stream`. Unknown `api` raises ValueError.
    """
    if api not in APIS:
        raise ValueError(f"Unknown API {api!r}; expected one of {', '.join(APIS)}.")
    if not body.strip():
        raise malformed("The response body is empty.")
    stripped = body.lstrip()
    is_json = stripped[:1] in (b"{", b"[")
    parsed: Any = None
    if is_json:
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise malformed(f"The body looks like JSON but does not parse: {exc}") from exc
    if status_code < 400 and parsed is not None:
        inferred = error_status(parsed)
        if inferred is not None:
            status_code = inferred
    if streaming is None:
        streaming = not is_json
    if api == "google" and isinstance(parsed, list):
        # streamGenerateContent without alt=sse answers a JSON array of chunks.
        body, streaming, is_json = _gemini_array_to_sse(parsed), True, False
    elif isinstance(parsed, list):
        raise malformed("The body is a JSON array, not a response object.")
    if streaming and is_json and status_code < 400:
        streaming = False  # an SSE parser cannot read a JSON body; read it as the JSON response it is
    content_type = "application/json" if (is_json or status_code >= 400) else "text/event-stream"
    wire = WireResponse(body=body, status_code=status_code, headers={"content-type": content_type})
    adapter = adapter_for_api(api, api_key="replay", transport=InMemoryTransport(wire), streaming=streaming)
    request = LLMRequest(model="recorded", messages=[MessageIn(role="user", content=[TextContent(text="replay")])])
    return adapter.stream(request).run()
