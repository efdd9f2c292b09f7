"""OpenAI Responses API through the `openai` SDK (`openai-responses/<model>`).

The result is built from the terminal event's `response` (`response.completed`, `response.incomplete`
or `response.failed`): it carries the output items and the usage. A stream that ends `incomplete` is a
usable result (partial content, usage, finish reason `length`/`content_filter`/the raw reason); one
that ends `failed` raises a `ProviderError` whose `result` keeps the usage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from runner.providers.base import (
    API_OPENAI_RESPONSES,
    Assembled,
    LLMRequest,
    OpenResult,
    StreamAccumulator,
    StreamChunk,
    usage_dict,
)
from runner.providers.errors import ProviderError, error_from_http, malformed
from runner.providers.history import assistant_tool_calls, message_text, parse_arguments, tool_returns
from runner.providers.openai_chat import OpenAIChatAdapter, image_url, openai_usage
from steps.values import (
    FunctionCall,
    ImageContent,
    ReasoningContent,
    SummarizedReasoningContent,
    SummaryPart,
    TextContent,
    ToolCall,
    ToolCallContent,
)

logger = logging.getLogger(__name__)

INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _input_image(image: ImageContent) -> dict[str, Any]:
    return {"type": "input_image", "image_url": image_url(image), "detail": image.detail or "auto"}


def build_input(request: LLMRequest) -> list[dict[str, Any]]:
    """Responses `input` items for a history (messages, reasoning items, function calls and outputs)."""
    items: list[dict[str, Any]] = []
    for message in request.messages:
        role = message.role
        if role == "system":
            items.append({"role": "system", "content": message_text(message)})
        elif role == "user":
            parts: list[dict[str, Any]] = []
            for part in message.content:
                if isinstance(part, TextContent):
                    parts.append({"type": "input_text", "text": part.text})
                elif isinstance(part, ImageContent):
                    parts.append(_input_image(part))
            items.append({"role": "user", "content": parts})
        elif role == "assistant":
            for part in message.content:
                # Reasoning can only be replayed as the encrypted item; a bare id needs server-side state.
                if isinstance(part, SummarizedReasoningContent) and part.encrypted_content:
                    items.append(
                        {
                            "type": "reasoning",
                            "id": part.id,
                            "summary": [{"type": "summary_text", "text": s.text} for s in part.summary],
                            "encrypted_content": part.encrypted_content,
                        }
                    )
            text = message_text(message)
            if text:
                items.append({"role": "assistant", "content": text})
            for call in assistant_tool_calls(message):
                items.append(
                    {"type": "function_call", "call_id": call.id, "name": call.name, "arguments": call.arguments}
                )
        elif role == "tool":
            for ret in tool_returns(message):
                output: str | list[dict[str, Any]]
                if all(isinstance(p, TextContent) for p in ret.parts):
                    output = "\n".join(p.text for p in ret.parts if isinstance(p, TextContent))
                else:
                    output = [
                        {"type": "input_text", "text": p.text} if isinstance(p, TextContent) else _input_image(p)
                        for p in ret.parts
                    ]
                items.append({"type": "function_call_output", "call_id": ret.tool_call_id, "output": output})
    return items


@dataclass(slots=True)
class _Terminal:
    """A non-streaming Response presented as the terminal event a stream would end with."""

    type: str
    response: Any


class ResponsesAccumulator(StreamAccumulator):
    """Streams deltas as chunks and builds the result from the terminal event's response."""

    def __init__(self) -> None:
        self.has_content = False
        self.response_id: str | None = None
        self.model: str | None = None
        self.final: Any = None
        self.terminal: str | None = None
        self.tool_index: dict[str, int] = {}
        self.streamed_text: list[str] = []

    def feed(self, event: Any) -> Sequence[StreamChunk] | None:
        kind = event.type
        if kind == "response.output_text.delta":
            self.has_content = True
            self.streamed_text.append(event.delta)
            return (StreamChunk("text", event.delta),)
        if kind == "response.reasoning_summary_text.delta" or kind == "response.reasoning_text.delta":
            self.has_content = True
            return (StreamChunk("reasoning", event.delta),)
        if kind == "response.function_call_arguments.delta" or kind == "response.custom_tool_call_input.delta":
            index = self.tool_index.get(event.item_id)
            if index is None:
                return None
            return (StreamChunk("tool_call", tool_call_index=index, arguments_delta=event.delta),)
        if kind == "response.output_item.added":
            item = event.item
            item_type = item.type
            if item_type == "function_call" or item_type == "custom_tool_call":
                self.has_content = True
                index = self.tool_index[item.id or item.call_id] = len(self.tool_index)
                initial = (item.arguments if item_type == "function_call" else item.input) or ""
                return (
                    StreamChunk(
                        "tool_call",
                        tool_call_index=index,
                        tool_call_id=item.call_id,
                        tool_name=item.name,
                        arguments_delta=initial,
                    ),
                )
            if item_type in ("reasoning", "message"):
                return None
            self.has_content = True  # built-in tool activity (web search, code interpreter, …) is output too
            return None
        if kind == "response.refusal.delta":
            self.has_content = True
            self.streamed_text.append(event.delta)
            return (StreamChunk("text", event.delta),)
        if kind in TERMINAL_EVENTS:
            self.terminal = kind
            self.final = event.response
            return None
        if kind == "response.created" or kind == "response.in_progress" or kind == "response.queued":
            response = event.response
            self.response_id = response.id
            self.model = response.model
            return None
        if kind == "error":
            raise error_from_http(
                status_code=None,
                body={"error": {"code": event.code, "message": event.message, "param": event.param}},
                message=event.message,
            )
        return None

    def finish(self) -> Assembled:
        response = self.final
        if response is None:
            raise malformed(
                "The Responses stream ended without response.completed, response.incomplete or response.failed."
            )
        content: list[Any] = []
        tool_calls: list[ToolCall] = []
        for item in response.output or []:
            item_type = item.type
            if item_type == "message":
                parts = item.content or []
                if not parts:
                    logger.warning("Responses output message %s has no content parts; skipped", item.id)
                    continue
                for part in parts:
                    text = part.text if part.type == "output_text" else getattr(part, "refusal", None)
                    if text:
                        content.append(TextContent(text=text))
            elif item_type == "reasoning":
                summary = [SummaryPart(index=i, text=s.text) for i, s in enumerate(item.summary or [])]
                texts = [c.text for c in (item.content or []) if getattr(c, "text", None)]
                if texts:
                    content.append(ReasoningContent(reasoning="".join(texts)))
                if summary or item.encrypted_content or not texts:
                    content.append(
                        SummarizedReasoningContent(
                            id=item.id, summary=summary, encrypted_content=item.encrypted_content
                        )
                    )
            elif item_type == "function_call" or item_type == "custom_tool_call":
                arguments = item.arguments if item_type == "function_call" else item.input
                call_input = parse_arguments(arguments) if item_type == "function_call" else {"input": arguments}
                content.append(ToolCallContent(id=item.call_id, name=item.name, input=call_input))
                tool_calls.append(
                    ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=arguments or "{}"))
                )
        if not any(isinstance(p, TextContent) for p in content) and self.streamed_text:
            # An interrupted response may not list the message it was writing; keep what was streamed.
            content.append(TextContent(text="".join(self.streamed_text)))
        raw = usage_dict(response.usage)
        usage = openai_usage(raw, prompt="input_tokens", completion="output_tokens")
        incomplete = response.incomplete_details
        reason = incomplete.reason if incomplete is not None and incomplete.reason else None
        if reason:
            finish_raw, finish = reason, INCOMPLETE_REASONS.get(reason, reason)
        else:
            finish_raw = response.status
            finish = ("tool_calls" if tool_calls else "stop") if finish_raw == "completed" else finish_raw
        assembled = Assembled(
            content=content,
            tool_calls=tool_calls,
            usage=usage,
            finish_reason_raw=finish_raw,
            finish_reason=finish,
            response_id=response.id,
            response_model=response.model,
            response_json={
                "id": response.id,
                "model": response.model,
                "status": response.status,
                "incomplete_details": incomplete.to_dict() if incomplete is not None else None,
                "finish_reason": finish_raw,
                "content": [part.model_dump(mode="json") for part in content],
                "tool_calls": [call.model_dump(mode="json") for call in tool_calls],
                "output_types": [item.type for item in response.output or []],
                "usage": raw,
            },
        )
        if response.status == "failed":
            error = response.error
            code = getattr(error, "code", None)
            message = getattr(error, "message", None) or "The response failed."
            failure: ProviderError = error_from_http(
                status_code=None, body={"error": {"code": code, "message": message, "type": code}}, message=message
            )
            failure.result = assembled  # the driver turns it into an LLMResult with timings
            raise failure
        return assembled


def events_from_response(response: Any) -> Iterator[Any]:
    """A non-streaming Response as the terminal event of a stream."""
    if getattr(response, "object", None) != "response" and not isinstance(getattr(response, "output", None), list):
        raise malformed("The body is not a Responses API response (no object/output).")
    status = response.status
    kind = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(status, "response.completed")
    yield _Terminal(type="response.created", response=response)
    yield _Terminal(type=kind, response=response)


class OpenAIResponsesAdapter(OpenAIChatAdapter):
    """Responses API adapter (`openai-responses/<model>`); shares client setup with Chat Completions."""

    api = API_OPENAI_RESPONSES

    def build_request(self, request: LLMRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": request.model, "input": build_input(request)}
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                    "strict": False,
                }
                for t in request.tools
            ]
            if request.tool_choice:
                params["tool_choice"] = request.tool_choice
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_output_tokens is not None:
            params["max_output_tokens"] = request.max_output_tokens
        return params

    def open_stream(self, params: dict[str, Any], *, streaming: bool) -> OpenResult:
        client = self.client()
        if streaming:
            stream = client.responses.create(**params, stream=True)
            return stream, stream.close
        return events_from_response(client.responses.create(**params)), None

    def new_accumulator(self) -> ResponsesAccumulator:
        return ResponsesAccumulator()
