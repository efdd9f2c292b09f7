"""GenAI-convention spans and metrics for the agent loop: invoke_agent, chat (CLIENT) and execute_tool.

Names follow the OpenTelemetry GenAI semantic conventions. Message content goes on spans only when
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true, and it is cut to the attribute size limit part by part,
so the JSON stays valid. Nothing here reads or records credentials.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings
from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from config.telemetry import Telemetry, current_telemetry

if TYPE_CHECKING:
    from agents.models import Agent, Run
    from steps.models import Step
    from steps.values import ContentPart, MessageIn, ToolCall, Usage

INSTRUMENTATION_NAME = "steplens"
FIRST_CHUNK_EVENT = "gen_ai.first_chunk"

# Bucket boundaries given by the GenAI metric conventions.
TOKEN_USAGE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)

# Steplens provider names -> the conventions' gen_ai.provider.name values.
_PROVIDER_NAMES = {"google": "gcp.gemini", "gemini": "gcp.gemini", "vertex": "gcp.vertex_ai"}


def provider_semconv_name(provider: str | None) -> str:
    """The gen_ai.provider.name for a Steplens provider name (openai, anthropic, google ...)."""
    name = (provider or "").lower()
    return _PROVIDER_NAMES.get(name, name or "_OTHER")


class ChatResult(Protocol):
    """What `ChatSpan.finish` reads from a finished LLM call: the runner's LLMResult has these fields.

    A protocol rather than the runner's class, so this module (traces) imports nothing from the layer above it.
    """

    content: Sequence[ContentPart]
    tool_calls: Sequence[ToolCall]
    usage: Usage
    finish_reason: str | None
    response_id: str | None
    response_model: str | None


class _Instruments:
    def __init__(self, meter: metrics.Meter) -> None:
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_USAGE_BUCKETS,
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.time_to_first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streaming response.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )


# Keyed on the installed Telemetry object: config.telemetry installs a new object whenever the providers change
# (and an empty one on reset), so a stale tracer is never used and config never has to call back into this module.
_cached: tuple[Telemetry, trace.Tracer, _Instruments] | None = None


def _state() -> tuple[Telemetry, trace.Tracer, _Instruments]:
    global _cached
    telemetry = current_telemetry()
    if _cached is None or _cached[0] is not telemetry:
        tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=telemetry.tracer_provider)
        meter = metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=telemetry.meter_provider)
        _cached = (telemetry, tracer, _Instruments(meter))
    return _cached


# --- content --------------------------------------------------------------------------------------------------------


def _as_dict(message: MessageIn | Mapping[str, Any]) -> Mapping[str, Any]:
    return message.model_dump(mode="json") if hasattr(message, "model_dump") else message


def _semconv_parts(message: Mapping[str, Any], cut: int) -> list[dict[str, Any]]:
    def text(value: str) -> str:
        return value if len(value) <= cut else value[:cut] + "…[truncated]"

    parts: list[dict[str, Any]] = []
    content = message.get("content") or []
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    for part in content:
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "text", "content": text(part["text"])})
        elif kind == "reasoning":
            parts.append({"type": "reasoning", "content": text(part["reasoning"])})
        elif kind == "tool_call":
            arguments = text(json.dumps(part.get("input") or {}))
            parts.append({"type": "tool_call", "id": part.get("id"), "name": part.get("name"), "arguments": arguments})
        elif kind == "tool_return":
            value = part.get("content")
            value = value if isinstance(value, str) else json.dumps(value)
            parts.append({"type": "tool_call_response", "id": part.get("tool_call_id"), "response": text(value)})
        elif kind == "image":
            source = part.get("source") or {}
            if source.get("type") == "url":
                parts.append({"type": "uri", "modality": "image", "uri": text(source.get("url", ""))})
            else:  # image bytes never go on a span
                parts.append(
                    {"type": "blob", "modality": "image", "mime_type": source.get("media_type"), "content": ""}
                )
    seen = {p.get("id") for p in parts if p["type"] == "tool_call"}
    for call in message.get("tool_calls") or []:
        if call.get("id") not in seen:
            function = call.get("function") or {}
            parts.append(
                {"type": "tool_call", "id": call.get("id"), "name": function.get("name"),
                 "arguments": text(function.get("arguments") or "")}
            )  # fmt: skip
    for ret in message.get("tool_returns") or []:
        if not any(p["type"] == "tool_call_response" and p.get("id") == ret.get("tool_call_id") for p in parts):
            value = ret.get("func_response")
            value = value if isinstance(value, str) else json.dumps(value)
            parts.append({"type": "tool_call_response", "id": ret.get("tool_call_id"), "response": text(value)})
    return parts


def messages_attribute(
    messages: Sequence[MessageIn | Mapping[str, Any]], *, limit: int, finish_reason: str | None = None
) -> str:
    """Messages as the conventions' JSON (role + parts), within `limit` characters and still valid JSON.

    Each text is cut to an equal share of the limit; if that is not enough the oldest messages are dropped.
    """
    dicts = [_as_dict(m) for m in messages]
    cut = limit
    while True:
        out = []
        for message in dicts:
            item: dict[str, Any] = {"role": message.get("role"), "parts": _semconv_parts(message, cut)}
            if finish_reason is not None:
                item["finish_reason"] = finish_reason
            out.append(item)
        encoded = json.dumps(out, ensure_ascii=False)
        if len(encoded) <= limit:
            return encoded
        if cut > 64:
            cut = max(64, min(cut // 2, limit // (2 * max(1, len(dicts)))))
        elif len(dicts) > 1:
            dicts = dicts[1:]
        else:
            return "[]"


# --- spans ----------------------------------------------------------------------------------------------------------


def record_error(span: Span, *, error_type: str, exc: BaseException | None = None, message: str | None = None) -> None:
    """Mark `span` failed: error.type, an ERROR status and the exception event."""
    span.set_attribute("error.type", error_type or "_OTHER")
    if exc is not None:
        span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, message or (str(exc) if exc is not None else error_type)))


def _set(span: Span, attributes: Mapping[str, Any]) -> None:
    for key, value in attributes.items():
        if value is not None and value != "":
            span.set_attribute(key, value)


@contextmanager
def run_span(*, run: Run, agent: Agent | None = None) -> Iterator[Span]:
    """`invoke_agent {agent}` span around one run (INTERNAL: the agent runs in this process).

    Continues the current context (the HTTP request, or the Celery task that carries it). An exception escaping
    the block marks the span failed and is re-raised.
    """
    _, tracer, _ = _state()
    agent = agent if agent is not None else run.agent
    name = agent.name if agent is not None else "agent"
    provider, _, model = (agent.model_handle if agent is not None else "").partition("/")
    with tracer.start_as_current_span(
        f"invoke_agent {name}", kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
    ) as span:
        if span.is_recording():
            _set(
                span,
                {
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.id": agent.pk if agent is not None else None,
                    "gen_ai.agent.name": name,
                    "gen_ai.provider.name": provider_semconv_name(provider) if provider else None,
                    "gen_ai.request.model": model or None,
                    "gen_ai.conversation.id": run.conversation_id,
                    "user.id": run.user_id,
                    "steplens.run_id": run.pk,
                    "steplens.request_id": run.request_id,
                },
            )
        try:
            yield span
        except BaseException as exc:
            record_error(span, error_type=type(exc).__qualname__, exc=exc)
            raise


class ChatSpan:
    """The handle `chat_span` yields: feed it the first chunk and the outcome; it sets attributes and metrics."""

    def __init__(self, span: Span, *, telemetry: Telemetry, instruments: _Instruments, base: dict[str, Any]) -> None:
        self.span = span
        self._telemetry = telemetry
        self._instruments = instruments
        self._metric_attributes = base
        self._start = time.monotonic_ns()
        self.ttft_ns: int | None = None
        self.outcome: str | None = None  # "finished" | "failed"

    @property
    def trace_ids(self) -> tuple[str | None, str | None]:
        """(trace_id, span_id) of this chat span as hex, for the Step row; (None, None) when not recording."""
        return span_ids(self.span)

    def bind_step(self, step: Step) -> None:
        """Attach the step (created after the span opened, with this span's ids) to the span."""
        _set(
            self.span,
            {"steplens.step_id": step.pk, "steplens.run_id": step.run_id, "steplens.request_id": step.request_id},
        )

    def first_chunk(self, ttft_ns: int | None = None) -> None:
        """The first content or tool-call chunk arrived; `ttft_ns` from the request start (measured here if None)."""
        if self.ttft_ns is not None:
            return
        self.ttft_ns = ttft_ns if ttft_ns is not None else time.monotonic_ns() - self._start
        seconds = self.ttft_ns / 1e9
        self.span.add_event(FIRST_CHUNK_EVENT, {"gen_ai.response.time_to_first_chunk": seconds})
        self.span.set_attribute("gen_ai.response.time_to_first_chunk", seconds)

    def finish(
        self,
        *,
        result: ChatResult | None = None,
        usage: Usage | None = None,
        finish_reason: str | None = None,
        response_id: str | None = None,
        response_model: str | None = None,
        output_messages: Sequence[MessageIn | Mapping[str, Any]] = (),
    ) -> None:
        """The call succeeded: response attributes, usage (cache and reasoning included) and output content.

        Pass the provider adapter's `result` (an LLMResult), or the pieces; explicit pieces win over the result's.
        """
        if result is not None:
            usage = usage if usage is not None else result.usage
            finish_reason = finish_reason or result.finish_reason
            response_id = response_id or result.response_id
            response_model = response_model or result.response_model
            if not output_messages:
                output_messages = [
                    {
                        "role": "assistant",
                        "content": [part.model_dump(mode="json") for part in result.content],
                        "tool_calls": [call.model_dump(mode="json") for call in result.tool_calls],
                    }
                ]
        self.outcome = "finished"
        if response_model:
            self._metric_attributes["gen_ai.response.model"] = response_model
        attributes: dict[str, Any] = {
            "gen_ai.response.id": response_id,
            "gen_ai.response.model": response_model,
            "gen_ai.response.finish_reasons": [finish_reason] if finish_reason else None,
        }
        if usage is not None:
            attributes.update(
                {
                    "gen_ai.usage.input_tokens": usage.prompt_tokens,
                    "gen_ai.usage.output_tokens": usage.completion_tokens,
                    "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
                    "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
                    "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
                }
            )
            for token_type, count in (("input", usage.prompt_tokens), ("output", usage.completion_tokens)):
                if count is not None:
                    self._instruments.token_usage.record(
                        count, {**self._metric_attributes, "gen_ai.token.type": token_type}
                    )
        if self.span.is_recording():
            _set(self.span, attributes)
            if output_messages and self._telemetry.capture_content:
                self.span.set_attribute(
                    "gen_ai.output.messages",
                    messages_attribute(
                        output_messages, limit=self._telemetry.attribute_limit, finish_reason=finish_reason
                    ),
                )

    def fail(
        self,
        *,
        error_type: str,
        exc: BaseException | None = None,
        message: str | None = None,
        usage: Usage | None = None,
    ) -> None:
        """The call failed: error.type, ERROR status, exception event; usage still counts if the provider sent it."""
        self.outcome = "failed"
        self._metric_attributes["error.type"] = error_type or "_OTHER"
        record_error(self.span, error_type=error_type, exc=exc, message=message)
        if usage is not None:
            _set(
                self.span,
                {
                    "gen_ai.usage.input_tokens": usage.prompt_tokens,
                    "gen_ai.usage.output_tokens": usage.completion_tokens,
                },
            )

    def _end(self) -> None:
        duration = (time.monotonic_ns() - self._start) / 1e9
        self._instruments.duration.record(duration, self._metric_attributes)
        if self.ttft_ns is not None and "error.type" not in self._metric_attributes:
            self._instruments.time_to_first_chunk.record(self.ttft_ns / 1e9, self._metric_attributes)


@contextmanager
def chat_span(
    *,
    provider: str,
    request_model: str,
    step: Step | None = None,
    run: Run | None = None,
    agent: Agent | None = None,
    operation: str = "chat",
    messages: Sequence[MessageIn | Mapping[str, Any]] = (),
    system_instructions: str | None = None,
    server_address: str | None = None,
    server_port: int | None = None,
    request: Mapping[str, Any] | None = None,
) -> Iterator[ChatSpan]:
    """`{operation} {request_model}` CLIENT span around one LLM call; yields a ChatSpan to report into.

    `request` may hold the request parameters (temperature, max_tokens, top_p, stream, seed). An exception escaping
    the block fails the span with error.type = the exception class (unless `fail` was called already). The
    duration, token-usage and time-to-first-chunk metrics are recorded when the block ends.
    """
    telemetry, tracer, instruments = _state()
    provider_name = provider_semconv_name(provider)
    base: dict[str, Any] = {"gen_ai.operation.name": operation, "gen_ai.provider.name": provider_name}
    if request_model:
        base["gen_ai.request.model"] = request_model
    if server_address:
        base["server.address"] = server_address
        if server_port:
            base["server.port"] = server_port
    with tracer.start_as_current_span(
        f"{operation} {request_model}".strip(),
        kind=SpanKind.CLIENT,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        chat = ChatSpan(span, telemetry=telemetry, instruments=instruments, base=dict(base))
        if span.is_recording():
            _set(span, base)
            params = request or {}
            _set(
                span,
                {
                    f"gen_ai.request.{key}": params.get(key)
                    for key in ("temperature", "max_tokens", "top_p", "top_k", "seed", "stream")
                    if key in params
                },
            )
            if step is not None:
                chat.bind_step(step)
                _set(span, {"gen_ai.conversation.id": step.conversation_id, "gen_ai.agent.id": step.agent_id})
            if run is not None:
                _set(span, {"steplens.run_id": run.pk, "steplens.request_id": run.request_id,
                            "gen_ai.conversation.id": run.conversation_id})  # fmt: skip
            if agent is not None:
                _set(span, {"gen_ai.agent.id": agent.pk, "gen_ai.agent.name": agent.name})
            if telemetry.capture_content:
                if messages:
                    span.set_attribute(
                        "gen_ai.input.messages", messages_attribute(messages, limit=telemetry.attribute_limit)
                    )
                if system_instructions:
                    cut = system_instructions[: telemetry.attribute_limit // 2]
                    span.set_attribute("gen_ai.system_instructions", json.dumps([{"type": "text", "content": cut}]))
        try:
            yield chat
        except BaseException as exc:
            if chat.outcome != "failed":
                chat.fail(error_type=type(exc).__qualname__, exc=exc)
            raise
        finally:
            chat._end()


class ToolSpan:
    """The handle `tool_span` yields."""

    def __init__(self, span: Span, *, telemetry: Telemetry) -> None:
        self.span = span
        self._telemetry = telemetry
        self.failed = False

    def result(self, value: Any) -> None:
        """The tool's result (on the span only when content capture is on)."""
        if self._telemetry.capture_content and self.span.is_recording():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            self.span.set_attribute("gen_ai.tool.call.result", text[: self._telemetry.attribute_limit])

    def fail(self, *, error_type: str, exc: BaseException | None = None, message: str | None = None) -> None:
        self.failed = True
        record_error(self.span, error_type=error_type, exc=exc, message=message)


@contextmanager
def tool_span(
    *,
    name: str,
    call_id: str | None = None,
    step: Step | None = None,
    run: Run | None = None,
    agent: Agent | None = None,
    arguments: Any = None,
    tool_type: str = "function",
    description: str | None = None,
) -> Iterator[ToolSpan]:
    """`execute_tool {name}` INTERNAL span around one tool call; arguments go on it only with content capture."""
    telemetry, tracer, _ = _state()
    with tracer.start_as_current_span(
        f"execute_tool {name}", kind=SpanKind.INTERNAL, record_exception=False, set_status_on_exception=False
    ) as span:
        tool = ToolSpan(span, telemetry=telemetry)
        if span.is_recording():
            _set(
                span,
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": name,
                    "gen_ai.tool.call.id": call_id,
                    "gen_ai.tool.type": tool_type,
                    "gen_ai.tool.description": description,
                },
            )
            if step is not None:
                _set(span, {"steplens.step_id": step.pk, "steplens.run_id": step.run_id})
            if run is not None:
                _set(span, {"steplens.run_id": run.pk, "steplens.request_id": run.request_id})
            if agent is not None:
                _set(span, {"gen_ai.agent.id": agent.pk, "gen_ai.agent.name": agent.name})
            if telemetry.capture_content and arguments is not None:
                text = arguments if isinstance(arguments, str) else json.dumps(arguments, default=str)
                span.set_attribute("gen_ai.tool.call.arguments", text[: telemetry.attribute_limit])
        try:
            yield tool
        except BaseException as exc:
            if not tool.failed:
                tool.fail(error_type=type(exc).__qualname__, exc=exc)
            raise


# --- ids and links --------------------------------------------------------------------------------------------------


def span_ids(span: Span) -> tuple[str | None, str | None]:
    context = span.get_span_context()
    if not context.is_valid:
        return None, None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


def current_trace_ids() -> tuple[str | None, str | None]:
    """(trace_id, span_id) of the current span as 32/16 hex chars, or (None, None) when there is none."""
    return span_ids(trace.get_current_span())


def trace_url(trace_id: str | None, span_id: str | None = None) -> str | None:
    """A link to the trace in the user's tracing backend from STEPLENS_TRACE_URL_TEMPLATE ({trace_id}, {span_id})."""
    template = getattr(settings, "STEPLENS_TRACE_URL_TEMPLATE", "")
    if not template or not trace_id:
        return None
    return template.replace("{trace_id}", trace_id).replace("{span_id}", span_id or "")
