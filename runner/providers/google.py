"""Google Gemini API through `google-genai` with an API key (`google/<model>`).

A streamed response is a series of `GenerateContentResponse` chunks and a non-streaming one is a single
chunk, so both go through the same accumulator. Usage comes from the last chunk carrying
`usageMetadata`; `completion_tokens = candidates + thoughts`. Gemini has no terminal event: a stream
is complete when a chunk carried a `finishReason` (or the prompt was blocked).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

import httpx2

from runner.providers.base import (
    API_GOOGLE,
    Assembled,
    BaseAdapter,
    LLMRequest,
    OpenResult,
    StreamAccumulator,
    StreamChunk,
    missing_key_error,
)
from runner.providers.errors import malformed
from runner.providers.history import (
    append_turn,
    assistant_tool_calls,
    new_call_id,
    resolve_return,
    system_text,
    tool_names_by_id,
    tool_returns,
)
from runner.providers.images import ImageData, ImageFetchError
from steps.values import (
    FunctionCall,
    ImageContent,
    OmittedReasoningContent,
    ReasoningContent,
    TextContent,
    ToolCall,
    ToolCallContent,
    Usage,
)

CONTENT_FILTER_REASONS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT"}
)
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length"} | {r: "content_filter" for r in CONTENT_FILTER_REASONS}
TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}

_END = object()


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data else None


def _unb64(data: str | None) -> bytes | None:
    if not data:
        return None
    try:
        return base64.b64decode(data)
    except ValueError:
        return None


def _inline(data: ImageData) -> dict[str, Any]:
    return {"inline_data": {"mime_type": data.media_type, "data": data.raw()}}


class GoogleAdapter(BaseAdapter):
    """Gemini adapter; requests are dicts in google-genai's snake_case shape."""

    provider_name = "google"
    api = API_GOOGLE

    def _make_client(self, http_client: httpx2.Client) -> Any:
        from google import genai
        from google.genai import types

        api_key = self.api_key or os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
        if not api_key:
            raise missing_key_error("GEMINI_API_KEY")
        options = types.HttpOptions(httpx_client=http_client, base_url=self.base_url)
        client = genai.Client(api_key=api_key, vertexai=False, http_options=options)
        _ = client.models
        return client

    def build_contents(self, request: LLMRequest) -> list[dict[str, Any]]:
        """Gemini `contents`; tool results are function responses with images as sibling inline parts."""
        names = tool_names_by_id(request.messages)
        out: list[dict[str, Any]] = []

        def add(role: str, parts: list[dict[str, Any]]) -> None:
            append_turn(out, role=role, items=parts, key="parts")

        for message in request.messages:
            role = message.role
            if role == "user":
                parts: list[dict[str, Any]] = []
                for part in message.content:
                    if isinstance(part, TextContent):
                        if part.text:
                            parts.append({"text": part.text})
                    elif isinstance(part, ImageContent):
                        try:
                            parts.append(_inline(self.image_fetcher.resolve(part)))
                        except ImageFetchError as exc:
                            parts.append({"text": f"[image could not be loaded: {exc}]"})
                add("user", parts)
            elif role == "assistant":
                parts = []
                pending_signature: bytes | None = None
                for part in message.content:
                    if isinstance(part, ReasoningContent) and part.signature:
                        parts.append(
                            {"text": part.reasoning, "thought": True, "thought_signature": _unb64(part.signature)}
                        )
                    elif isinstance(part, OmittedReasoningContent) and part.signature:
                        # The signature belonged to the part that followed the hidden thoughts.
                        pending_signature = _unb64(part.signature)
                    elif isinstance(part, TextContent) and part.text:
                        text_part: dict[str, Any] = {"text": part.text}
                        if pending_signature:
                            text_part["thought_signature"] = pending_signature
                            pending_signature = None
                        parts.append(text_part)
                for call in assistant_tool_calls(message):
                    call_part: dict[str, Any] = {"function_call": {"name": call.name, "args": call.input}}
                    signature = _unb64(call.signature) or pending_signature
                    pending_signature = None
                    if signature:
                        call_part["thought_signature"] = signature
                    parts.append(call_part)
                add("model", parts)
            elif role == "tool":
                parts = []
                images: list[dict[str, Any]] = []
                for view in tool_returns(message):
                    ret = resolve_return(view, self.image_fetcher)
                    key = "error" if ret.is_error else "output"
                    name = names.get(ret.tool_call_id, ret.tool_call_id)
                    parts.append({"function_response": {"name": name, "response": {key: ret.text}}})
                    images.extend(_inline(img) for img in ret.images)
                add("user", parts + images)
        return out

    def build_request(self, request: LLMRequest) -> dict[str, Any]:
        # The agent loop runs the tools; the SDK must never call Python functions itself.
        config: dict[str, Any] = {"automatic_function_calling": {"disable": True}}
        system = system_text(request.messages)
        if system:
            config["system_instruction"] = system
        if request.tools:
            config["tools"] = [
                {
                    "function_declarations": [
                        {"name": t.name, "description": t.description, "parameters_json_schema": t.parameters}
                        for t in request.tools
                    ]
                }
            ]
            if request.tool_choice in TOOL_MODES:
                config["tool_config"] = {"function_calling_config": {"mode": TOOL_MODES[request.tool_choice]}}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.max_output_tokens is not None:
            config["max_output_tokens"] = request.max_output_tokens
        return {"model": request.model, "contents": self.build_contents(request), "config": config}

    def open_stream(self, params: dict[str, Any], *, streaming: bool) -> OpenResult:
        models = self.client().models
        if not streaming:
            return (models.generate_content(**params),), None
        stream = models.generate_content_stream(**params)
        # google-genai sends the request on first iteration; pull it now, while the call context is bound.
        first = next(stream, _END)
        if first is _END:
            return (), stream.close
        return itertools.chain((first,), stream), stream.close

    def new_accumulator(self) -> GoogleAccumulator:
        return GoogleAccumulator()


class _Segment:
    __slots__ = ("kind", "signature", "text")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.text: list[str] = []
        self.signature: str | None = None


class GoogleAccumulator(StreamAccumulator):
    """Merges consecutive text and thought parts across chunks; keeps every function call of candidate 0."""

    def __init__(self) -> None:
        self.has_content = False
        self.response_id: str | None = None
        self.model: str | None = None
        self.usage: Any = None
        self.finish_reason: str | None = None
        self.block_reason: str | None = None
        self.segments: list[_Segment | tuple[str, str, str, str | None]] = []
        self.tool_count = 0
        self.chunks_seen = 0

    def feed(self, chunk: Any) -> Sequence[StreamChunk] | None:
        self.chunks_seen += 1
        if self.response_id is None:
            self.response_id = chunk.response_id
            self.model = chunk.model_version
        if chunk.usage_metadata is not None:
            self.usage = chunk.usage_metadata
        feedback = chunk.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            self.block_reason = getattr(feedback.block_reason, "value", str(feedback.block_reason))
        candidates = chunk.candidates
        if not candidates:
            return None
        candidate = candidates[0]
        if candidate.finish_reason is not None:
            reason = candidate.finish_reason
            self.finish_reason = getattr(reason, "value", None) or str(reason)
        content = candidate.content
        if content is None or not content.parts:
            return None
        out: list[StreamChunk] = []
        segments = self.segments
        for part in content.parts:
            call = part.function_call
            if call is not None:
                self.has_content = True
                index = self.tool_count
                self.tool_count += 1
                arguments = json.dumps(call.args or {}, ensure_ascii=False)
                # Gemini calls often have no id; derive a stable one so replays print the same ids.
                call_id = call.id or (f"call_{self.response_id}_{index}" if self.response_id else new_call_id())
                segments.append((call_id, call.name or "", arguments, _b64(part.thought_signature)))
                out.append(
                    StreamChunk(
                        "tool_call",
                        tool_call_index=index,
                        tool_call_id=call_id,
                        tool_name=call.name,
                        arguments_delta=arguments,
                    )
                )
                continue
            text = part.text
            signature = part.thought_signature
            if text is None and signature is None:
                if part.executable_code is not None or part.code_execution_result is not None:
                    self.has_content = True
                continue
            kind = "reasoning" if part.thought else "text"
            last = segments[-1] if segments else None
            if isinstance(last, _Segment) and last.kind == kind and not (signature and last.signature):
                segment = last
            else:
                segment = _Segment(kind)
                segments.append(segment)
            if signature:
                segment.signature = _b64(signature)
            if text:
                self.has_content = True
                segment.text.append(text)
                out.append(StreamChunk(kind, text))  # type: ignore[arg-type]
        return out

    def finish(self) -> Assembled:
        if self.finish_reason is None and self.block_reason is None:
            if self.chunks_seen == 0:
                raise malformed("The Gemini stream carried no response.")
            raise malformed("The Gemini stream ended without a finishReason.")
        usage = Usage()
        raw = None
        if self.usage is not None:
            raw = self.usage.model_dump(mode="json", by_alias=True, exclude_none=True)
            candidates = self.usage.candidates_token_count
            thoughts = self.usage.thoughts_token_count
            completion = None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
            usage = Usage(
                prompt_tokens=self.usage.prompt_token_count,
                completion_tokens=completion,
                cached_input_tokens=self.usage.cached_content_token_count,
                cache_write_tokens=None,
                reasoning_tokens=thoughts,
                prompt_tokens_details=raw,
                completion_tokens_details=raw,
            )
        content: list[Any] = []
        tool_calls: list[ToolCall] = []
        has_reasoning = any(isinstance(s, _Segment) and s.kind == "reasoning" for s in self.segments)
        hidden_reasoning_noted = False
        for segment in self.segments:
            if isinstance(segment, tuple):
                call_id, name, arguments, signature = segment
                content.append(ToolCallContent(id=call_id, name=name, input=json.loads(arguments), signature=signature))
                tool_calls.append(ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments)))
                continue
            text = "".join(segment.text)
            if segment.kind == "reasoning":
                content.append(ReasoningContent(reasoning=text, signature=segment.signature))
                continue
            if segment.signature and not has_reasoning:
                # Thoughts were billed but not returned; the signature must go back with this text part.
                content.append(OmittedReasoningContent(signature=segment.signature))
                hidden_reasoning_noted = True
            if text:
                content.append(TextContent(text=text))
        if usage.reasoning_tokens and not has_reasoning and not hidden_reasoning_noted:
            content.insert(0, OmittedReasoningContent())
        raw_finish = self.finish_reason
        if raw_finish is None:
            finish = "content_filter"  # the prompt itself was blocked
        elif raw_finish == "STOP" and tool_calls:
            finish = "tool_calls"
        else:
            finish = FINISH_REASONS.get(raw_finish, raw_finish)
        return Assembled(
            content=content,
            tool_calls=tool_calls,
            usage=usage,
            finish_reason_raw=raw_finish,
            finish_reason=finish,
            response_id=self.response_id,
            response_model=self.model,
            response_json={
                "id": self.response_id,
                "model": self.model,
                "finish_reason": raw_finish,
                "block_reason": self.block_reason,
                "content": [part.model_dump(mode="json") for part in content],
                "tool_calls": [call.model_dump(mode="json") for call in tool_calls],
                "usage": raw,
            },
        )
