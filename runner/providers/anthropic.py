"""Anthropic Messages API through the `anthropic` SDK (`anthropic/<model>`).

Usage in a stream: input and cache counts come from `message_start`; `output_tokens` from the last
`message_delta` (cumulative), and any non-null count `message_delta` carries wins (compaction can lower
the cache numbers). Only the top-level usage counts. Server-side tool blocks (`server_tool_use`,
`mcp_tool_use`, their results) are not client tool calls and are left out of the content.

`LLMRequest.temperature` is not sent: the SDK (anthropic>=2, API version 2026-10-21) has no sampling
parameters and the API rejects them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2

from runner.providers.base import (
    API_ANTHROPIC,
    Assembled,
    BaseAdapter,
    LLMRequest,
    OpenResult,
    StreamAccumulator,
    StreamChunk,
    missing_key_error,
    usage_dict,
)
from runner.providers.errors import malformed
from runner.providers.history import (
    append_turn,
    assistant_tool_calls,
    new_call_id,
    parse_arguments,
    resolve_return,
    system_text,
    tool_returns,
)
from runner.providers.images import ImageData, ImageFetchError
from steps.values import (
    FunctionCall,
    ImageContent,
    ReasoningContent,
    RedactedReasoningContent,
    TextContent,
    ToolCall,
    ToolCallContent,
    Usage,
)

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
TOOL_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}
DEFAULT_MAX_TOKENS = 8192


def _image_block(data: ImageData) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": data.media_type, "data": data.data}}


class AnthropicAdapter(BaseAdapter):
    """Messages API adapter; `default_max_tokens` is sent when the request sets no output limit."""

    provider_name = "anthropic"
    api = API_ANTHROPIC

    def __init__(self, *, default_max_tokens: int = DEFAULT_MAX_TOKENS, **options: Any) -> None:
        super().__init__(**options)
        self.default_max_tokens = default_max_tokens

    def _make_client(self, http_client: httpx2.Client) -> Any:
        import anthropic

        api_key = self.api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not api_key:
            raise missing_key_error("ANTHROPIC_API_KEY")
        # anthropic 2.x traces its own calls (`anthropic.messages.create`, operation `chat`, with usage) on the
        # global tracer provider; the loop's `chat {model}` span already is the one span per LLM call, so a
        # second would make every GenAI backend (Steplens's own ingest too) count each call and its cost twice.
        client = anthropic.Anthropic(
            api_key=api_key, base_url=self.base_url, http_client=http_client, max_retries=0, open_telemetry=False
        )
        _ = client.messages  # import the lazily loaded resource now
        return client

    def _user_blocks(self, message: Any) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextContent):
                if part.text:
                    blocks.append({"type": "text", "text": part.text})
            elif isinstance(part, ImageContent):
                source = part.source
                if source.type == "url" and not source.url.startswith("data:"):
                    blocks.append({"type": "image", "source": {"type": "url", "url": source.url}})
                    continue
                try:
                    blocks.append(_image_block(self.image_fetcher.resolve(part)))
                except ImageFetchError as exc:
                    blocks.append({"type": "text", "text": f"[image could not be loaded: {exc}]"})
        return blocks

    def build_messages(self, request: LLMRequest) -> list[dict[str, Any]]:
        """Anthropic `messages`: tool results go in user turns; consecutive same-role turns are merged."""
        out: list[dict[str, Any]] = []

        def add(role: str, blocks: list[dict[str, Any]]) -> None:
            append_turn(out, role=role, items=blocks, key="content")

        for message in request.messages:
            role = message.role
            if role == "user":
                add("user", self._user_blocks(message))
            elif role == "assistant":
                blocks: list[dict[str, Any]] = []
                for part in message.content:
                    if isinstance(part, ReasoningContent) and part.signature:
                        # Unsigned reasoning (another provider's) cannot be sent back to Claude.
                        blocks.append({"type": "thinking", "thinking": part.reasoning, "signature": part.signature})
                    elif isinstance(part, RedactedReasoningContent):
                        blocks.append({"type": "redacted_thinking", "data": part.data})
                    elif isinstance(part, TextContent) and part.text:
                        blocks.append({"type": "text", "text": part.text})
                for call in assistant_tool_calls(message):
                    blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input})
                add("assistant", blocks)
            elif role == "tool":
                results: list[dict[str, Any]] = []
                for view in tool_returns(message):
                    ret = resolve_return(view, self.image_fetcher)
                    inner: list[dict[str, Any]] = []
                    for p in ret.parts:
                        if isinstance(p, TextContent):
                            if p.text:
                                inner.append({"type": "text", "text": p.text})
                        else:
                            inner.append(_image_block(p))
                    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": ret.tool_call_id, "content": inner}
                    if ret.is_error:
                        block["is_error"] = True
                    results.append(block)
                add("user", results)
        return out

    def build_request(self, request: LLMRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_output_tokens or self.default_max_tokens,
            "messages": self.build_messages(request),
        }
        system = system_text(request.messages)
        if system:
            params["system"] = system
        if request.tools:
            params["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools
            ]
            if request.tool_choice in TOOL_CHOICES:
                params["tool_choice"] = TOOL_CHOICES[request.tool_choice]
        # No temperature: API version 2026-10-21 (what anthropic>=2 sends) answers 400 to any sampling
        # parameter, and the SDK no longer accepts one.
        return params

    def open_stream(self, params: dict[str, Any], *, streaming: bool) -> OpenResult:
        client = self.client()
        if streaming:
            stream = client.messages.create(**params, stream=True)
            return stream, stream.close
        return events_from_message(client.messages.create(**params)), None

    def new_accumulator(self) -> AnthropicAccumulator:
        return AnthropicAccumulator()


class _Block:
    __slots__ = ("args", "block", "data", "id", "name", "signature", "text", "tool_index", "type")

    def __init__(self, block: Any) -> None:
        self.block = block
        self.type: str = block.type
        self.text: list[str] = []
        self.args: list[str] = []
        self.signature: str | None = None
        self.data: str | None = None
        self.id: str | None = None
        self.name: str | None = None
        self.tool_index: int | None = None


class AnthropicAccumulator(StreamAccumulator):
    """Assembles raw Messages stream events; requires `message_stop` as the terminal event."""

    def __init__(self) -> None:
        self.has_content = False
        self.response_id: str | None = None
        self.model: str | None = None
        self.blocks: dict[int, _Block] = {}
        self.tool_count = 0
        self.start_usage: Any = None
        self.delta_usage: Any = None
        self.stop_reason: str | None = None
        self.stopped = False

    def feed(self, event: Any) -> Sequence[StreamChunk] | None:
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            dtype = delta.type
            slot = self.blocks.get(event.index)
            if slot is None:
                return None
            if dtype == "text_delta":
                slot.text.append(delta.text)
                return (StreamChunk("text", delta.text),)
            if dtype == "thinking_delta":
                slot.text.append(delta.thinking)
                return (StreamChunk("reasoning", delta.thinking),)
            if dtype == "input_json_delta":
                slot.args.append(delta.partial_json)
                if slot.tool_index is None:
                    return None  # a server tool's input
                return (StreamChunk("tool_call", tool_call_index=slot.tool_index, arguments_delta=delta.partial_json),)
            if dtype == "signature_delta":
                slot.signature = delta.signature
            return None
        if kind == "content_block_start":
            block = event.content_block
            slot = self.blocks[event.index] = _Block(block)
            self.has_content = True
            btype = slot.type
            if btype == "text":
                if block.text:
                    slot.text.append(block.text)
                    return (StreamChunk("text", block.text),)
            elif btype == "thinking":
                slot.signature = block.signature or None
                if block.thinking:
                    slot.text.append(block.thinking)
                    return (StreamChunk("reasoning", block.thinking),)
            elif btype == "redacted_thinking":
                slot.data = block.data
            elif btype == "tool_use":
                slot.id = block.id
                slot.name = block.name
                slot.tool_index = self.tool_count
                self.tool_count += 1
                initial = json.dumps(block.input, ensure_ascii=False) if block.input else ""
                if initial:
                    slot.args.append(initial)
                return (
                    StreamChunk(
                        "tool_call",
                        tool_call_index=slot.tool_index,
                        tool_call_id=block.id,
                        tool_name=block.name,
                        arguments_delta=initial,
                    ),
                )
            return None
        if kind == "message_start":
            message = event.message
            self.response_id = message.id
            self.model = message.model
            self.start_usage = message.usage
            return None
        if kind == "message_delta":
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            if event.usage is not None:
                self.delta_usage = event.usage
            return None
        if kind == "message_stop":
            self.stopped = True
        return None

    def _usage(self) -> Usage:
        start = usage_dict(self.start_usage)
        delta = usage_dict(self.delta_usage)
        if start is None and delta is None:
            return Usage()
        raw = dict(start or {})
        for key, value in (delta or {}).items():
            if value is not None:
                raw[key] = value
        input_tokens = raw.get("input_tokens")
        cache_read = raw.get("cache_read_input_tokens")
        cache_write = raw.get("cache_creation_input_tokens")
        counts = (input_tokens, cache_read, cache_write)
        prompt = None if all(c is None for c in counts) else sum(c or 0 for c in counts)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=raw.get("output_tokens"),
            cached_input_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=None,
            prompt_tokens_details=raw,
            completion_tokens_details=raw,
        )

    def finish(self) -> Assembled:
        if not self.stopped:
            raise malformed("The Anthropic stream ended without message_stop.")
        content: list[Any] = []
        tool_calls: list[ToolCall] = []
        for index in sorted(self.blocks):
            slot = self.blocks[index]
            btype = slot.type
            if btype == "text":
                text = "".join(slot.text)
                if text:
                    content.append(TextContent(text=text))
            elif btype == "thinking":
                content.append(ReasoningContent(reasoning="".join(slot.text), signature=slot.signature))
            elif btype == "redacted_thinking":
                content.append(RedactedReasoningContent(data=slot.data or ""))
            elif btype == "tool_use":
                arguments = "".join(slot.args) or "{}"
                call_id = slot.id or new_call_id()
                name = slot.name or ""
                content.append(ToolCallContent(id=call_id, name=name, input=parse_arguments(arguments)))
                tool_calls.append(ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments)))
        usage = self._usage()
        stop = self.stop_reason
        return Assembled(
            content=content,
            tool_calls=tool_calls,
            usage=usage,
            finish_reason_raw=stop,
            finish_reason=FINISH_REASONS.get(stop, stop) if stop is not None else None,
            response_id=self.response_id,
            response_model=self.model,
            response_json={
                "id": self.response_id,
                "model": self.model,
                "stop_reason": stop,
                "content": [part.model_dump(mode="json") for part in content],
                "tool_calls": [call.model_dump(mode="json") for call in tool_calls],
                "block_types": [self.blocks[i].type for i in sorted(self.blocks)],
                "usage": usage.prompt_tokens_details,
            },
        )


@dataclass(slots=True)
class _Event:
    type: str
    message: Any = None
    index: int = 0
    content_block: Any = None
    delta: Any = None
    usage: Any = None


@dataclass(slots=True)
class _StopDelta:
    stop_reason: str | None


def events_from_message(message: Any) -> Iterator[_Event]:
    """A non-streaming Message as the events a stream would carry (whole blocks in content_block_start)."""
    if getattr(message, "type", None) != "message" or not isinstance(getattr(message, "content", None), list):
        raise malformed("The body is not an Anthropic message (type must be 'message').")
    yield _Event("message_start", message=message)
    for index, block in enumerate(message.content):
        yield _Event("content_block_start", index=index, content_block=block)
        yield _Event("content_block_stop", index=index)
    yield _Event("message_delta", delta=_StopDelta(message.stop_reason), usage=message.usage)
    yield _Event("message_stop")
