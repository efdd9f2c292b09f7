"""GenAI spans -> what a Step, Run or tool call records: usage, timings, outcome, messages and a provider trace.

Accepted spellings, newest first (the first one present wins):

- operation: `gen_ai.operation.name` (chat / generate_content / text_completion, invoke_agent, execute_tool);
  OpenInference `openinference.span.kind` (LLM, AGENT, TOOL); Traceloop `llm.request.type` (chat, completion).
- provider: `gen_ai.provider.name`, `gen_ai.system`, `llm.provider`, `llm.system`.
- usage: `gen_ai.usage.input_tokens`/`output_tokens` (or `prompt_tokens`/`completion_tokens`), cache read
  (`gen_ai.usage.cache_read.input_tokens`, `gen_ai.usage.cache_read_input_tokens`), cache write
  (`gen_ai.usage.cache_creation.input_tokens`, `gen_ai.usage.cache_creation_input_tokens`), reasoning
  (`gen_ai.usage.reasoning.output_tokens`), OpenInference `llm.token_count.*`.
- messages: `gen_ai.input.messages`/`gen_ai.output.messages`/`gen_ai.system_instructions` (JSON string or
  structured), the older `gen_ai.prompt`/`gen_ai.completion` (event attributes or flattened
  `gen_ai.prompt.N.role` attributes), OpenInference `llm.input_messages.N.message.*`/`llm.output_messages`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from steps.truncation import json_depth_capped
from steps.values import MessageIn, Usage, validate_message
from traces.ingest.decode import OtlpSpan, clean_value

LLM_OPERATIONS = {"chat", "generate_content", "text_completion", "completion"}
_ROLE_ALIASES = {"developer": "system", "model": "assistant", "human": "user", "ai": "assistant", "function": "tool"}
_PROVIDER_ALIASES = {
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "gemini": "google",
    "vertex_ai": "google",
    "google_genai": "google",
    "az.ai.openai": "azure.ai.openai",
}
# Provider finish reasons -> stop / length / tool_calls / content_filter (DESIGN.md).
_FINISH_REASONS = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "complete": "stop",
    "length": "length",
    "max_tokens": "length",
    "max_output_tokens": "length",
    "tool_calls": "tool_calls",
    "tool_call": "tool_calls",
    "tool_use": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "safety": "content_filter",
    "recitation": "content_filter",
    "blocklist": "content_filter",
    "prohibited_content": "content_filter",
    "spii": "content_filter",
}
_TTFT_EVENTS = {"gen_ai.first_chunk", "gen_ai.content.first_chunk", "first_token", "first_chunk", "llm.first_token"}
_OI_MESSAGE = re.compile(r"^llm\.(input|output)_messages\.(\d+)\.message\.(.+)$")
_LEGACY_MESSAGE = re.compile(r"^gen_ai\.(prompt|completion)\.(\d+)\.(.+)$")
_MAX_STORED_TEXT = 100_000
_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
_MESSAGES: TypeAdapter[list[MessageIn]] = TypeAdapter(list[MessageIn])


class SpanRejected(Exception):
    """This span cannot be used; the reason goes into the partial-success message."""


@dataclass(slots=True)
class LlmCall:
    """One LLM span, ready for steps_record_many."""

    span: OtlpSpan
    provider: str | None
    request_model: str | None
    response_model: str | None
    usage: Usage
    finish_reason: str | None
    response_id: str | None
    ttft_ns: int | None
    input_messages: list[MessageIn]
    output_messages: list[MessageIn]
    raw_input: Any
    raw_output: Any
    request_params: dict[str, Any]
    user_id: str | None
    conversation_id: str | None
    request_id: str | None
    tags: list[str]
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    dropped_messages: int = 0
    trace_cut: bool = False  # its provider trace was cut to STEPLENS_PROVIDER_TRACE_MAX_BYTES
    tool_ns: int = 0
    tool_messages: list[MessageIn] = field(default_factory=list)

    @property
    def created_at(self) -> datetime:
        return ns_to_datetime(self.span.start_ns)

    @property
    def completed_at(self) -> datetime:
        return ns_to_datetime(self.span.end_ns or self.span.start_ns)


@dataclass(slots=True)
class AgentInvocation:
    span: OtlpSpan
    agent_name: str
    agent_external_id: str | None
    provider: str | None
    request_model: str | None
    user_id: str | None
    conversation_id: str | None
    request_id: str | None
    error_type: str | None
    error_message: str | None


@dataclass(slots=True)
class ToolExecution:
    span: OtlpSpan
    name: str
    call_id: str | None
    result: str | None
    error_type: str | None


def ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def _first(attrs: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


def _count(attrs: dict[str, Any], *keys: str) -> int | None:
    value = _first(attrs, *keys)
    if value is None:
        return None
    if isinstance(value, bool):
        raise SpanRejected(f"token count {keys[0]} is not a number")
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise SpanRejected(f"token count {keys[0]} is not a number") from exc
    if number < 0 or number > 2**31 - 1:
        raise SpanRejected(f"token count {keys[0]} is out of range")
    return number


def _str(value: Any, limit: int = 200) -> str | None:
    if value is None or value == "":
        return None
    return str(value)[:limit]


def span_kind(span: OtlpSpan) -> str | None:
    """'llm', 'agent', 'tool' or None (a span Steplens does not map)."""
    attrs = span.attributes
    operation = attrs.get("gen_ai.operation.name")
    if operation in LLM_OPERATIONS:
        return "llm"
    if operation == "invoke_agent":
        return "agent"
    if operation == "execute_tool":
        return "tool"
    oi_kind = str(attrs.get("openinference.span.kind") or "").upper()
    if oi_kind == "LLM":
        return "llm"
    if oi_kind == "AGENT":
        return "agent"
    if oi_kind == "TOOL":
        return "tool"
    if attrs.get("llm.request.type") in {"chat", "completion"}:
        return "llm"
    return None


def normalize_provider(value: Any) -> str | None:
    if value is None or value == "":
        return None
    name = str(value).lower()
    return _PROVIDER_ALIASES.get(name, name)[:64]


def normalize_finish_reason(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or value == "":
        return None
    raw = str(value)
    return _FINISH_REASONS.get(raw.lower(), raw[:64])


def _error(span: OtlpSpan) -> tuple[str | None, str | None, str | None]:
    """(error_type, message, traceback) for an ERROR span or a span with an exception event."""
    exception = next((e for e in span.events if e.name == "exception"), None)
    if span.status_code != 2 and exception is None:
        return None, None, None
    attrs = exception.attributes if exception else {}
    error_type = _first(span.attributes, "error.type") or attrs.get("exception.type") or "error"
    message = span.status_message or attrs.get("exception.message") or str(error_type)
    return str(error_type)[:64], str(message), attrs.get("exception.stacktrace")


def _loads(value: Any) -> Any:
    if isinstance(value, str):
        try:
            loaded = json_depth_capped(json.loads(value))
        except (RecursionError, ValueError):  # not JSON, or nested past the parser's limit: kept as text
            return value
        # JSON text may spell a NUL as \u0000, which PostgreSQL would refuse once decoded.
        return clean_value(loaded) if "\\u0000" in value else loaded
    return value


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_STORED_TEXT]


def _role(value: Any) -> str | None:
    role = str(value or "").lower()
    role = _ROLE_ALIASES.get(role, role)
    return role if role in {"system", "user", "assistant", "tool"} else None


def _semconv_message(message: dict[str, Any]) -> dict[str, Any] | None:
    """A gen_ai.input/output.messages entry (role + parts) as a MessageIn dict."""
    role = _role(message.get("role"))
    if role is None:
        return None
    content: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    tool_returns: list[dict[str, Any]] = []
    parts = message.get("parts")
    if parts is None and "content" in message:  # the older {role, content} shape
        parts = [{"type": "text", "content": message["content"]}] if message["content"] else []
    for index, part in enumerate(parts or []):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and part.get("content") is not None:
            content.append({"type": "text", "text": _text(part["content"])})
        elif kind == "reasoning" and part.get("content") is not None:
            content.append({"type": "reasoning", "reasoning": _text(part["content"])})
        elif kind == "tool_call":
            call_id = str(part.get("id") or f"call_{index}")
            arguments = _loads(part.get("arguments"))
            arguments_text = (
                part["arguments"] if isinstance(part.get("arguments"), str) else json.dumps(arguments or {})
            )
            content.append(
                {"type": "tool_call", "id": call_id, "name": str(part.get("name") or ""),
                 "input": arguments if isinstance(arguments, dict) else {}}
            )  # fmt: skip
            tool_calls.append(
                {"id": call_id, "function": {"name": str(part.get("name") or ""), "arguments": arguments_text}}
            )
        elif kind == "tool_call_response":
            call_id = str(part.get("id") or f"call_{index}").strip()
            result = _text(part.get("response", part.get("result")))
            content.append({"type": "tool_return", "tool_call_id": call_id, "content": result})
            tool_returns.append({"tool_call_id": call_id, "status": "success", "func_response": result})
        elif kind == "uri" and str(part.get("uri", "")).startswith(("http://", "https://")):
            if part.get("modality") == "image" or str(part.get("mime_type") or "").startswith("image/"):
                content.append({"type": "image", "source": {"type": "url", "url": part["uri"]}})
        elif kind == "blob" and part.get("mime_type") in _IMAGE_TYPES and part.get("content"):
            source = {"type": "base64", "media_type": part["mime_type"], "data": part["content"]}
            content.append({"type": "image", "source": source})
    if not content and not tool_calls:
        return None
    out: dict[str, Any] = {"role": role, "content": content, "name": _str(message.get("name"))}
    if tool_calls:
        out["tool_calls"] = tool_calls
    if tool_returns:
        out["tool_returns"] = tool_returns
        out["tool_call_id"] = tool_returns[0]["tool_call_id"]
    return out


def _openinference_messages(attrs: dict[str, Any], direction: str) -> list[dict[str, Any]]:
    """llm.{input,output}_messages.N.message.* flattened attributes, grouped back into messages."""
    grouped: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        match = _OI_MESSAGE.match(key)
        if match and match.group(1) == direction:
            grouped.setdefault(int(match.group(2)), {})[match.group(3)] = value
    out = []
    for index in sorted(grouped):
        fields = grouped[index]
        parts: list[dict[str, Any]] = []
        if fields.get("content"):
            parts.append({"type": "text", "content": fields["content"]})
        contents: dict[int, dict[str, Any]] = {}
        calls: dict[int, dict[str, Any]] = {}
        for key, value in fields.items():
            if m := re.match(r"^contents\.(\d+)\.message_content\.(.+)$", key):
                contents.setdefault(int(m.group(1)), {})[m.group(2)] = value
            elif m := re.match(r"^tool_calls\.(\d+)\.tool_call\.(.+)$", key):
                calls.setdefault(int(m.group(1)), {})[m.group(2)] = value
        for j in sorted(contents):
            item = contents[j]
            if item.get("type", "text") == "text" and item.get("text"):
                parts.append({"type": "text", "content": item["text"]})
            elif item.get("type") == "image" and item.get("image.image.url"):
                parts.append({"type": "uri", "modality": "image", "uri": item["image.image.url"]})
        for j in sorted(calls):
            call = calls[j]
            parts.append(
                {"type": "tool_call", "id": call.get("id"), "name": call.get("function.name"),
                 "arguments": call.get("function.arguments")}
            )  # fmt: skip
        role = fields.get("role")
        if _role(role) == "tool":
            text = " ".join(p["content"] for p in parts if p["type"] == "text")
            parts = [{"type": "tool_call_response", "id": fields.get("tool_call_id"), "response": text}]
        out.append({"role": role, "parts": parts, "name": fields.get("name")})
    return out


def _legacy_messages(span: OtlpSpan, which: str) -> list[dict[str, Any]]:
    """gen_ai.prompt / gen_ai.completion: an event attribute (JSON or text) or flattened span attributes."""
    for event in span.events:
        value = event.attributes.get(f"gen_ai.{which}")
        if value is not None:
            loaded = _loads(value)
            if isinstance(loaded, list):
                return [m for m in loaded if isinstance(m, dict)]
            role = "user" if which == "prompt" else "assistant"
            return [{"role": role, "content": _text(loaded)}]
    grouped: dict[int, dict[str, Any]] = {}
    for key, value in span.attributes.items():
        match = _LEGACY_MESSAGE.match(key)
        if match and match.group(1) == which:
            grouped.setdefault(int(match.group(2)), {})[match.group(3)] = value
    out = []
    for index in sorted(grouped):
        fields = grouped[index]
        default_role = "user" if which == "prompt" else "assistant"
        out.append({"role": fields.get("role") or default_role, "content": fields.get("content")})
    return out


def _structured(value: Any) -> list[dict[str, Any]]:
    loaded = _loads(value)
    if isinstance(loaded, dict):
        loaded = [loaded]
    return [m for m in loaded if isinstance(m, dict)] if isinstance(loaded, list) else []


def _validated(raw: list[dict[str, Any]]) -> tuple[list[MessageIn], int]:
    """Messages that pass Steplens validation, and how many were dropped.

    The content is external, so it is validated; all of a span's messages in one pass, and one by one only when
    that pass fails (to keep the good ones).
    """
    converted = [m for m in (_semconv_message(item) for item in raw) if m is not None]
    if not converted:
        return [], 0
    try:
        return _MESSAGES.validate_python(converted), 0
    except PydanticValidationError:
        pass
    out: list[MessageIn] = []
    dropped = 0
    for message in converted:
        try:
            out.append(validate_message(message))
        except Exception:  # one bad message must not cost the step its usage
            dropped += 1
    return out, dropped


def _messages(span: OtlpSpan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    attrs = span.attributes
    raw_in = _structured(attrs.get("gen_ai.input.messages")) if "gen_ai.input.messages" in attrs else []
    raw_out = _structured(attrs.get("gen_ai.output.messages")) if "gen_ai.output.messages" in attrs else []
    if not raw_in:
        raw_in = _openinference_messages(attrs, "input") or _legacy_messages(span, "prompt")
    if not raw_out:
        raw_out = _openinference_messages(attrs, "output") or _legacy_messages(span, "completion")
    system = attrs.get("gen_ai.system_instructions")
    if system:
        loaded = _loads(system)
        parts = loaded if isinstance(loaded, list) else [{"type": "text", "content": _text(loaded)}]
        raw_in = [{"role": "system", "parts": [p for p in parts if isinstance(p, dict)]}, *raw_in]
    return raw_in, raw_out


def _ttft_ns(span: OtlpSpan) -> int | None:
    seconds = span.attributes.get("gen_ai.response.time_to_first_chunk")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        return int(seconds * 1e9)
    for event in span.events:
        if event.name in _TTFT_EVENTS and event.time_ns >= span.start_ns:
            return event.time_ns - span.start_ns
    return None


def _common(span: OtlpSpan) -> tuple[str | None, str | None, str | None]:
    attrs = span.attributes
    user_id = _str(_first(attrs, "user.id", "enduser.id", "gen_ai.user.id"))
    conversation_id = _str(_first(attrs, "gen_ai.conversation.id", "session.id", "gen_ai.session.id"))
    request_id = _str(_first(attrs, "steplens.request_id", "http.request.header.x-request-id"), 128)
    return user_id, conversation_id, request_id


def _check_span(span: OtlpSpan) -> None:
    if not span.ids_valid:
        raise SpanRejected("span has an invalid trace_id or span_id")
    if not span.start_ns:
        raise SpanRejected("span has no start time")
    if span.end_ns and span.end_ns < span.start_ns:
        raise SpanRejected("span ends before it starts")


def _usage(attrs: dict[str, Any]) -> Usage:
    """Token usage of an LLM span; raises SpanRejected for a count that is not a non-negative int32."""
    prompt = _count(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt")
    completion = _count(
        attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion"
    )
    cache_read = _count(
        attrs,
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read",
    )
    cache_write = _count(
        attrs,
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "llm.token_count.prompt_details.cache_write",
    )
    reasoning = _count(
        attrs,
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    )
    # The conventions count cached tokens inside input_tokens; some instrumentations (Anthropic's raw fields)
    # report them beside it. When the parts exceed the whole, the whole left them out.
    if prompt is not None and (cache_read or 0) + (cache_write or 0) > prompt:
        prompt += (cache_read or 0) + (cache_write or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


# The attributes span_precheck reads: the span kind and the token counts.
PRECHECK_KEYS = frozenset(
    {
        "gen_ai.operation.name", "openinference.span.kind", "llm.request.type",
        "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
        "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion",
        "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read", "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens", "llm.token_count.prompt_details.cache_write",
        "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    }
)  # fmt: skip


def span_precheck(span: OtlpSpan) -> None:
    """What can be rejected cheaply when a request is accepted (ids, times, token counts); raises SpanRejected.

    The same checks run again when the batch is mapped, so the rejections reported at accept time are the ones
    mapping makes for these reasons.
    """
    kind = span_kind(span)
    if kind is None:
        if not span.ids_valid:
            raise SpanRejected("span has an invalid trace_id or span_id")
        return
    _check_span(span)
    if kind == "llm":
        _usage(span.attributes)


def llm_call(span: OtlpSpan) -> LlmCall:
    """Read an LLM span; raises SpanRejected when it cannot become a step."""
    _check_span(span)
    attrs = span.attributes
    usage = _usage(attrs)
    raw_in, raw_out = _messages(span)
    input_messages, dropped_in = _validated(raw_in)
    output_messages, dropped_out = _validated(raw_out)
    finish = _first(attrs, "gen_ai.response.finish_reasons", "llm.response.finish_reason")
    if finish is None:
        finish = next((m.get("finish_reason") for m in raw_out if m.get("finish_reason")), None)
    error_type, error_message, traceback = _error(span)
    params = {
        key.removeprefix("gen_ai.request."): value
        for key, value in attrs.items()
        if key.startswith("gen_ai.request.") and key != "gen_ai.request.model"
    }
    if "llm.invocation_parameters" in attrs:
        loaded = _loads(attrs["llm.invocation_parameters"])
        if isinstance(loaded, dict):
            params.update(loaded)
    tags = attrs.get("tag.tags")
    user_id, conversation_id, request_id = _common(span)
    return LlmCall(
        span=span,
        provider=normalize_provider(
            _first(attrs, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
        ),
        request_model=_str(_first(attrs, "gen_ai.request.model", "llm.model_name")),
        response_model=_str(_first(attrs, "gen_ai.response.model", "llm.response.model")),
        usage=usage,
        finish_reason=normalize_finish_reason(finish),
        response_id=_str(_first(attrs, "gen_ai.response.id")),
        ttft_ns=_ttft_ns(span),
        input_messages=input_messages,
        output_messages=output_messages,
        raw_input=raw_in,
        raw_output=raw_out,
        request_params=params,
        user_id=user_id,
        conversation_id=conversation_id,
        request_id=request_id,
        tags=[str(t)[:100] for t in tags] if isinstance(tags, list) else [],
        error_type=error_type,
        error_message=error_message,
        traceback=traceback,
        dropped_messages=dropped_in + dropped_out,
    )


def agent_invocation(span: OtlpSpan) -> AgentInvocation:
    _check_span(span)
    attrs = span.attributes
    name = _first(attrs, "gen_ai.agent.name", "agent.name", "gen_ai.agent.id")
    if name is None:
        name = span.name.removeprefix("invoke_agent").strip() or "agent"
    error_type, error_message, _ = _error(span)
    user_id, conversation_id, request_id = _common(span)
    return AgentInvocation(
        span=span,
        agent_name=str(name)[:200],
        agent_external_id=_str(attrs.get("gen_ai.agent.id")),
        provider=normalize_provider(_first(attrs, "gen_ai.provider.name", "gen_ai.system")),
        request_model=_str(attrs.get("gen_ai.request.model")),
        user_id=user_id,
        conversation_id=conversation_id,
        request_id=request_id,
        error_type=error_type,
        error_message=error_message,
    )


def tool_execution(span: OtlpSpan) -> ToolExecution:
    _check_span(span)
    attrs = span.attributes
    error_type, _, _ = _error(span)
    result = _first(attrs, "gen_ai.tool.call.result", "output.value")
    return ToolExecution(
        span=span,
        name=str(_first(attrs, "gen_ai.tool.name", "tool.name") or span.name.removeprefix("execute_tool").strip()),
        call_id=_str(_first(attrs, "gen_ai.tool.call.id", "tool_call.id")),
        result=_text(result) if result is not None else None,
        error_type=error_type,
    )


def new_turn(messages: list[MessageIn]) -> list[MessageIn]:
    """The input messages a step adds to its conversation: everything after the last assistant message.

    Each LLM span carries the whole history; storing only the new turn keeps a run's messages free of copies.
    """
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "assistant":
            return messages[index + 1 :]
    return messages
