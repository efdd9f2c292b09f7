"""OpenAI Chat Completions (and any OpenAI-compatible server via OPENAI_BASE_URL) through the `openai` SDK.

Usage comes from the final usage chunk (`stream_options.include_usage`); a stream without one has no
usage (all None). Images in tool results become a text placeholder: Chat tool messages carry text only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import httpx2
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from runner.providers.base import (
    API_OPENAI_CHAT,
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
    assistant_tool_calls,
    message_text,
    new_call_id,
    parse_arguments,
    tool_returns,
)
from runner.providers.images import ImageFetcher
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

FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}

IMAGE_PLACEHOLDER = "[image returned by the tool: {what}; images cannot be sent in Chat Completions tool results]"


def image_url(image: ImageContent) -> str:
    source = image.source
    if source.type == "url":
        return source.url
    return f"data:{source.media_type};base64,{source.data}"


def _describe(image: ImageContent) -> str:
    source = image.source
    return source.url if source.type == "url" and not source.url.startswith("data:") else "inline image"


def build_messages(request: LLMRequest) -> list[dict[str, Any]]:
    """Chat `messages` for a history: system/user/assistant messages and one `tool` message per result."""
    out: list[dict[str, Any]] = []
    for message in request.messages:
        role = message.role
        if role == "system":
            out.append({"role": "system", "content": message_text(message)})
        elif role == "user":
            if all(isinstance(p, TextContent) for p in message.content):
                out.append({"role": "user", "content": message_text(message)})
                continue
            parts: list[dict[str, Any]] = []
            for part in message.content:
                if isinstance(part, TextContent):
                    parts.append({"type": "text", "text": part.text})
                elif isinstance(part, ImageContent):
                    url: dict[str, Any] = {"url": image_url(part)}
                    if part.detail:
                        url["detail"] = part.detail
                    parts.append({"type": "image_url", "image_url": url})
            out.append({"role": "user", "content": parts})
        elif role == "assistant":
            text = message_text(message)
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            calls = assistant_tool_calls(message)
            if calls:
                entry["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ]
            if entry["content"] is None and not calls:
                entry["content"] = ""
            out.append(entry)
        elif role == "tool":
            for ret in tool_returns(message):
                pieces = [
                    p.text if isinstance(p, TextContent) else IMAGE_PLACEHOLDER.format(what=_describe(p))
                    for p in ret.parts
                ]
                out.append({"role": "tool", "tool_call_id": ret.tool_call_id, "content": "\n".join(pieces)})
    return out


def openai_usage(raw: dict[str, Any] | None, *, prompt: str, completion: str) -> Usage:
    """OpenAI's usage object (Chat: prompt/completion_tokens; Responses: input/output_tokens) normalized.

    Cached tokens sit in `<prompt>_details.cached_tokens` and reasoning tokens in
    `<completion>_details.reasoning_tokens`; OpenAI reports no cache writes.
    """
    if raw is None:
        return Usage()
    prompt_details = raw.get(f"{prompt}_details") or {}
    completion_details = raw.get(f"{completion}_details") or {}
    return Usage(
        prompt_tokens=raw.get(prompt),
        completion_tokens=raw.get(completion),
        cached_input_tokens=prompt_details.get("cached_tokens"),
        cache_write_tokens=None,
        reasoning_tokens=completion_details.get("reasoning_tokens"),
        prompt_tokens_details=raw,
        completion_tokens_details=raw.get(f"{completion}_details"),
    )


class _ToolSlot:
    __slots__ = ("args", "id", "index", "name")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id: str | None = None
        self.name: str | None = None
        self.args: list[str] = []


class ChatAccumulator(StreamAccumulator):
    """Assembles `ChatCompletionChunk`s (choice 0) into a result."""

    def __init__(self) -> None:
        self.has_content = False
        self.response_id: str | None = None
        self.model: str | None = None
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tools: dict[int, _ToolSlot] = {}
        self.finish_reason: str | None = None
        self.usage: Any = None

    def feed(self, chunk: ChatCompletionChunk) -> Sequence[StreamChunk] | None:
        if self.response_id is None:
            self.response_id = chunk.id
            self.model = chunk.model
        if chunk.usage is not None:
            self.usage = chunk.usage
        choices = chunk.choices
        if not choices:
            return None
        choice = choices[0]
        if choice.index != 0:
            return None
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        delta = choice.delta
        if delta is None:
            return None
        out: list[StreamChunk] | None = None
        extra = delta.__pydantic_extra__
        if extra:
            # OpenAI-compatible servers (vLLM, DeepSeek, OpenRouter) stream reasoning under these names.
            reasoning = extra.get("reasoning_content") or extra.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self.reasoning.append(reasoning)
                self.has_content = True
                out = [StreamChunk("reasoning", reasoning)]
        content = delta.content
        if content:
            self.text.append(content)
            self.has_content = True
            if out is None and not delta.tool_calls and not delta.refusal:
                return (StreamChunk("text", content),)  # the common case, kept short
            out = out or []
            out.append(StreamChunk("text", content))
        refusal = delta.refusal
        if refusal:
            self.text.append(refusal)
            self.has_content = True
            out = out or []
            out.append(StreamChunk("text", refusal))
        tool_calls = delta.tool_calls
        if tool_calls:
            self.has_content = True
            out = out or []
            for tc in tool_calls:
                slot = self.tools.get(tc.index)
                first = slot is None
                if slot is None:
                    slot = self.tools[tc.index] = _ToolSlot(len(self.tools))
                if tc.id:
                    slot.id = tc.id
                fn = tc.function
                args = ""
                if fn is not None:
                    if fn.name and not slot.name:
                        slot.name = fn.name
                    if fn.arguments:
                        args = fn.arguments
                        slot.args.append(args)
                out.append(
                    StreamChunk(
                        "tool_call",
                        tool_call_index=slot.index,
                        tool_call_id=slot.id if first else None,
                        tool_name=slot.name if first else None,
                        arguments_delta=args,
                    )
                )
        return out

    def finish(self) -> Assembled:
        if self.finish_reason is None:
            raise malformed("The Chat Completions stream ended before a finish_reason.")
        raw = usage_dict(self.usage)
        usage = openai_usage(raw, prompt="prompt_tokens", completion="completion_tokens")
        content: list[Any] = []
        if self.reasoning:
            content.append(ReasoningContent(reasoning="".join(self.reasoning), is_native=True))
        elif usage.reasoning_tokens:
            content.append(OmittedReasoningContent())
        text = "".join(self.text)
        if text:
            content.append(TextContent(text=text))
        tool_calls: list[ToolCall] = []
        for slot in self.tools.values():
            call_id = slot.id or new_call_id()
            arguments = "".join(slot.args) or "{}"
            name = slot.name or ""
            content.append(ToolCallContent(id=call_id, name=name, input=parse_arguments(arguments)))
            tool_calls.append(ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments)))
        finish = self.finish_reason
        return Assembled(
            content=content,
            tool_calls=tool_calls,
            usage=usage,
            finish_reason_raw=finish,
            finish_reason=FINISH_REASONS.get(finish, finish),
            response_id=self.response_id,
            response_model=self.model,
            response_json={
                "id": self.response_id,
                "model": self.model,
                "finish_reason": finish,
                "content": [part.model_dump(mode="json") for part in content],
                "tool_calls": [call.model_dump(mode="json") for call in tool_calls],
                "usage": raw,
            },
        )


def chunks_from_completion(completion: ChatCompletion) -> Iterator[ChatCompletionChunk]:
    """A non-streaming completion as the one chunk a stream would have carried (choice 0, with usage)."""
    if not isinstance(getattr(completion, "choices", None), list) or not isinstance(completion.id, str):
        raise malformed("The body is not a Chat Completions response (no id/choices).")
    data = completion.to_dict()
    choices = []
    for choice in data.get("choices") or []:
        message = dict(choice.get("message") or {})
        if message.get("tool_calls"):
            calls = []
            for i, tc in enumerate(message["tool_calls"]):
                if tc.get("type") == "custom" and isinstance(tc.get("custom"), dict):
                    # A custom (free-form) tool call: its raw input stands where function arguments would.
                    tc = {**tc, "function": {"name": tc["custom"].get("name"), "arguments": tc["custom"].get("input")}}
                calls.append(dict(tc, index=i))
            message["tool_calls"] = calls
        choices.append(
            {"index": choice.get("index", 0), "delta": message, "finish_reason": choice.get("finish_reason")}
        )
    data["choices"] = choices
    data["object"] = "chat.completion.chunk"
    yield ChatCompletionChunk.construct(**data)  # like the SDK's own parsing: lenient, no validation


class OpenAIChatAdapter(BaseAdapter):
    """Chat Completions adapter (`openai/<model>`)."""

    provider_name = "openai"
    api = API_OPENAI_CHAT

    def __init__(self, *, image_fetcher: ImageFetcher | None = None, **options: Any) -> None:
        super().__init__(image_fetcher=image_fetcher, **options)
        if self.base_url is None:
            self.base_url = os.environ.get("OPENAI_BASE_URL") or None

    def _make_client(self, http_client: httpx2.Client) -> Any:
        import openai

        api_key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            if not self.base_url:
                raise missing_key_error("OPENAI_API_KEY")
            api_key = "not-needed"  # local OpenAI-compatible servers accept any key
        client = openai.OpenAI(api_key=api_key, base_url=self.base_url, http_client=http_client, max_retries=0)
        _ = client.chat.completions, client.responses  # import the lazily loaded resources now
        return client

    def build_request(self, request: LLMRequest) -> dict[str, Any]:
        params: dict[str, Any] = {"model": request.model, "messages": build_messages(request)}
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
            if request.tool_choice:
                params["tool_choice"] = request.tool_choice
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_output_tokens is not None:
            # OpenAI itself wants max_completion_tokens (reasoning models reject max_tokens);
            # OpenAI-compatible servers still widely know only max_tokens.
            key = "max_tokens" if self.base_url and "api.openai.com" not in self.base_url else "max_completion_tokens"
            params[key] = request.max_output_tokens
        return params

    def open_stream(self, params: dict[str, Any], *, streaming: bool) -> OpenResult:
        client = self.client()
        if streaming:
            stream = client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
            return stream, stream.close
        completion = client.chat.completions.create(**params)
        return chunks_from_completion(completion), None

    def new_accumulator(self) -> ChatAccumulator:
        return ChatAccumulator()
