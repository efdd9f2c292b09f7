"""Synthesize realistic provider wire bytes from a small turn description, for the four APIs.

`synthesize(api=..., turn=..., model=...)` returns the `WireResponse` the provider would have sent:
an SSE stream with the provider's real event shapes (Chat chunks with a usage chunk and `[DONE]`,
Responses events ending in `response.completed`/`response.incomplete`, Anthropic message events,
Gemini `data:` chunks with CRLF), or an error response with the provider's error envelope, status
and headers. The bytes go through the real SDKs, so they exercise exactly the production parsing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from runner.providers.transport import WireResponse, json_response, sse_response

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")


@dataclass
class ToolCallSpec:
    """A function call the scripted model makes; `arguments` is a dict or exact JSON text."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_text(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass
class TurnUsage:
    """Usage in Steplens' normalized terms (prompt includes cached and cache-write tokens; completion
    includes reasoning tokens); each API's raw usage object is derived from it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


ERROR_KINDS = (
    "rate_limit",
    "server_error",
    "overloaded",
    "context_window",
    "authentication",
    "permission_denied",
    "not_found",
    "bad_request",
)


@dataclass
class ErrorSpec:
    """An error the scripted provider answers with.

    `kind` picks the provider's own status, body and headers (one of ERROR_KINDS); `status_code`,
    `body` and `headers` override them. `mid_stream=True` sends some content first and then the
    provider's in-stream error event instead of an HTTP error.
    """

    kind: str = "server_error"
    message: str | None = None
    status_code: int | None = None
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    mid_stream: bool = False


@dataclass
class Turn:
    """One scripted LLM response.

    `finish_reason` is normalized (stop/length/tool_calls/content_filter; default: tool_calls when
    there are tool calls, else stop) and translated into each API's own value. `usage=None` estimates
    counts from the text lengths. `truncate=True` cuts the stream before its terminal event.
    """

    text: str = ""
    reasoning: str = ""
    reasoning_signature: str | None = None
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    usage: TurnUsage | None = None
    finish_reason: str | None = None
    error: ErrorSpec | None = None
    truncate: bool = False
    chunk_chars: int = 16
    response_id: str | None = None
    chunk_delay: float | None = None
    first_chunk_delay: float | None = None


def _pieces(text: str, size: int) -> list[str]:
    size = max(size, 1)
    return [text[i : i + size] for i in range(0, len(text), size)] if text else []


def _id(prefix: str, seed: str, length: int = 24) -> str:
    return prefix + hashlib.sha256(seed.encode()).hexdigest()[:length]


def estimate_tokens(text: str) -> int:
    """A rough token count (4 characters a token) for plausible scripted usage."""
    return max(1, (len(text) + 3) // 4) if text else 0


def turn_usage(turn: Turn, *, prompt_chars: int = 0) -> TurnUsage:
    if turn.usage is not None:
        return turn.usage
    reasoning = estimate_tokens(turn.reasoning)
    tools = sum(estimate_tokens(c.name + c.arguments_text()) + 5 for c in turn.tool_calls)
    return TurnUsage(
        prompt_tokens=max(estimate_tokens("x" * prompt_chars), 8),
        completion_tokens=estimate_tokens(turn.text) + reasoning + tools,
        reasoning_tokens=reasoning,
    )


def _finish(turn: Turn) -> str:
    finish = turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")
    if finish not in FINISH_REASONS:
        raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, not {finish!r}")
    return finish


def _signature(turn: Turn) -> str:
    if turn.reasoning_signature:
        return turn.reasoning_signature
    return base64.b64encode(hashlib.sha256(turn.reasoning.encode()).digest() * 2).decode()


def _sse(events: list[bytes], *, truncate: bool, keep_tail: int) -> bytes:
    """Join events; a truncated stream loses its terminal `keep_tail` events and about half of the rest."""
    if truncate:
        cut = min(max(1, (len(events) - keep_tail) // 2 + 1), len(events) - keep_tail)
        events = events[: max(cut, 0)]
    return b"".join(events)


def _event(name: str | None, data: Any, *, crlf: bool = False) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    nl = "\r\n" if crlf else "\n"
    head = f"event: {name}{nl}" if name else ""
    return f"{head}data: {payload}{nl}{nl}".encode()


# --- errors -------------------------------------------------------------------------------------

_DEFAULT_MESSAGES = {
    "rate_limit": "Rate limit reached for requests. Please try again later.",
    "server_error": "The server had an error while processing your request.",
    "overloaded": "Overloaded",
    "context_window": "prompt is too long: 212000 tokens > 200000 maximum",
    "authentication": "Invalid API key provided.",
    "permission_denied": "Your API key does not have permission to use this model.",
    "not_found": "The requested model does not exist.",
    "bad_request": "Invalid request.",
}
_OPENAI = {
    "rate_limit": (429, "requests", "rate_limit_exceeded"),
    "server_error": (500, "server_error", None),
    "overloaded": (503, "server_error", None),
    "context_window": (400, "invalid_request_error", "context_length_exceeded"),
    "authentication": (401, "invalid_request_error", "invalid_api_key"),
    "permission_denied": (403, "invalid_request_error", "model_not_available"),
    "not_found": (404, "invalid_request_error", "model_not_found"),
    "bad_request": (400, "invalid_request_error", None),
}
_ANTHROPIC = {
    "rate_limit": (429, "rate_limit_error"),
    "server_error": (500, "api_error"),
    "overloaded": (529, "overloaded_error"),
    "context_window": (400, "invalid_request_error"),
    "authentication": (401, "authentication_error"),
    "permission_denied": (403, "permission_error"),
    "not_found": (404, "not_found_error"),
    "bad_request": (400, "invalid_request_error"),
}
_GOOGLE = {
    "rate_limit": (429, "RESOURCE_EXHAUSTED"),
    "server_error": (500, "INTERNAL"),
    "overloaded": (503, "UNAVAILABLE"),
    "context_window": (400, "INVALID_ARGUMENT"),
    "authentication": (401, "UNAUTHENTICATED"),
    "permission_denied": (403, "PERMISSION_DENIED"),
    "not_found": (404, "NOT_FOUND"),
    "bad_request": (400, "INVALID_ARGUMENT"),
}
_CONTEXT_MESSAGES = {
    "openai_chat": "This model's maximum context length is 128000 tokens. However, your messages resulted in "
    "131072 tokens. Please reduce the length of the messages.",
    "openai_responses": "Your input exceeds the context window of this model. Please adjust your input and try again.",
    "anthropic": "prompt is too long: 212000 tokens > 200000 maximum",
    "google": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
}


def error_parts(*, api: str, error: ErrorSpec) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and headers of `error` as `api` would send them."""
    if error.kind not in ERROR_KINDS:
        raise ValueError(f"ErrorSpec.kind must be one of {ERROR_KINDS}, not {error.kind!r}")
    message = error.message or (
        _CONTEXT_MESSAGES[api] if error.kind == "context_window" else _DEFAULT_MESSAGES[error.kind]
    )
    headers = dict(error.headers)
    retry_after = error.retry_after if error.retry_after is not None else (1.0 if error.kind == "rate_limit" else None)
    if retry_after is not None:
        headers.setdefault("retry-after", f"{retry_after:g}")
    body: dict[str, Any]
    if api in ("openai_chat", "openai_responses"):
        status, err_type, code = _OPENAI[error.kind]
        if error.kind == "context_window" and api == "openai_responses":
            code = "context_length_exceeded"
        body = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    elif api == "anthropic":
        status, err_type = _ANTHROPIC[error.kind]
        body = {"type": "error", "error": {"type": err_type, "message": message}, "request_id": "req_scripted"}
    else:
        status, google_status = _GOOGLE[error.kind]
        body = {"error": {"code": status, "message": message, "status": google_status}}
        if retry_after is not None:
            body["error"]["details"] = [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{int(retry_after)}s"}
            ]
    if isinstance(error.body, dict):
        body = error.body
    return (error.status_code or status), body, headers


def _error_response(*, api: str, error: ErrorSpec) -> WireResponse:
    status, body, headers = error_parts(api=api, error=error)
    raw = error.body if isinstance(error.body, bytes) else json.dumps(body).encode()
    return json_response(raw, status_code=status, headers=headers)


def _mid_stream_error_event(*, api: str, error: ErrorSpec) -> bytes:
    _, body, _ = error_parts(api=api, error=error)
    if api == "anthropic":
        return _event("error", body)
    if api == "openai_responses":
        inner = body["error"]
        return _event(
            "error",
            {
                "type": "error",
                "code": inner.get("code") or inner.get("type"),
                "message": inner["message"],
                "param": None,
                "sequence_number": 999,
            },
        )
    if api == "google":
        return _event(None, body, crlf=True)
    return _event(None, body)


# --- the four APIs ------------------------------------------------------------------------------


def _openai_chat(turn: Turn, *, model: str, usage: TurnUsage, seed: str) -> list[bytes]:
    rid = turn.response_id or _id("chatcmpl-", seed, 29)
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        data = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_scripted",
            "choices": [choice],
            "usage": None,
        }
        return _event(None, data)

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    # OpenAI-compatible servers (vLLM, DeepSeek) stream reasoning as `reasoning_content`.
    events += [chunk({"reasoning_content": p}) for p in _pieces(turn.reasoning, turn.chunk_chars)]
    events += [chunk({"content": p}) for p in _pieces(turn.text, turn.chunk_chars)]
    for index, call in enumerate(turn.tool_calls):
        call_id = call.id or _id("call_", f"{seed}:{index}")
        first = {"index": index, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        events.append(chunk({"tool_calls": [first]}))
        for piece in _pieces(call.arguments_text(), turn.chunk_chars):
            events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    events.append(chunk({}, _finish(turn)))
    usage_data = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_scripted",
        "choices": [],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": usage.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
    }
    events.append(_event(None, usage_data))
    events.append(b"data: [DONE]\n\n")
    return events


def _openai_responses(turn: Turn, *, model: str, usage: TurnUsage, seed: str) -> list[bytes]:
    rid = turn.response_id or _id("resp_", seed, 48)
    created = int(time.time())
    seq = 0

    def ev(kind: str, **data: Any) -> bytes:
        nonlocal seq
        payload = {"type": kind, "sequence_number": seq, **data}
        seq += 1
        return _event(kind, payload)

    def response(status: str, output: list[dict[str, Any]], usage_obj: Any, incomplete: Any) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": status,
            "model": model,
            "output": output,
            "usage": usage_obj,
            "incomplete_details": incomplete,
            "error": None,
            "instructions": None,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "temperature": 1.0,
            "top_p": 1.0,
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "reasoning": {"effort": None, "summary": None},
            "store": True,
            "metadata": {},
        }

    events = [ev("response.created", response=response("in_progress", [], None, None))]
    events.append(ev("response.in_progress", response=response("in_progress", [], None, None)))
    output: list[dict[str, Any]] = []
    if turn.reasoning or usage.reasoning_tokens:
        index = len(output)
        item_id = _id("rs_", seed, 48)
        summary = [{"type": "summary_text", "text": turn.reasoning}] if turn.reasoning else []
        events.append(
            ev(
                "response.output_item.added",
                output_index=index,
                item={"id": item_id, "type": "reasoning", "summary": []},
            )
        )
        if turn.reasoning:
            part = {"type": "summary_text", "text": ""}
            events.append(
                ev(
                    "response.reasoning_summary_part.added",
                    item_id=item_id,
                    output_index=index,
                    summary_index=0,
                    part=part,
                )
            )
            for piece in _pieces(turn.reasoning, turn.chunk_chars):
                events.append(
                    ev(
                        "response.reasoning_summary_text.delta",
                        item_id=item_id,
                        output_index=index,
                        summary_index=0,
                        delta=piece,
                    )
                )
            events.append(
                ev(
                    "response.reasoning_summary_text.done",
                    item_id=item_id,
                    output_index=index,
                    summary_index=0,
                    text=turn.reasoning,
                )
            )
            events.append(
                ev(
                    "response.reasoning_summary_part.done",
                    item_id=item_id,
                    output_index=index,
                    summary_index=0,
                    part=summary[0],
                )
            )
        item = {"id": item_id, "type": "reasoning", "summary": summary}
        events.append(ev("response.output_item.done", output_index=index, item=item))
        output.append(item)
    if turn.text:
        index = len(output)
        item_id = _id("msg_", seed, 48)
        added = {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        events.append(ev("response.output_item.added", output_index=index, item=added))
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events.append(
            ev("response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=empty)
        )
        for piece in _pieces(turn.text, turn.chunk_chars):
            events.append(
                ev(
                    "response.output_text.delta",
                    item_id=item_id,
                    output_index=index,
                    content_index=0,
                    delta=piece,
                    logprobs=[],
                )
            )
        done_part = {"type": "output_text", "text": turn.text, "annotations": [], "logprobs": []}
        events.append(
            ev(
                "response.output_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=turn.text,
                logprobs=[],
            )
        )
        events.append(
            ev("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=done_part)
        )
        status = "incomplete" if _finish(turn) in ("length", "content_filter") else "completed"
        item = {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [done_part]}
        events.append(ev("response.output_item.done", output_index=index, item=item))
        output.append(item)
    for number, call in enumerate(turn.tool_calls):
        index = len(output)
        item_id = _id("fc_", f"{seed}:{number}", 48)
        call_id = call.id or _id("call_", f"{seed}:{number}")
        arguments = call.arguments_text()
        added = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": call.name,
            "arguments": "",
        }
        events.append(ev("response.output_item.added", output_index=index, item=added))
        for piece in _pieces(arguments, turn.chunk_chars):
            events.append(
                ev("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=piece)
            )
        events.append(
            ev("response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=arguments)
        )
        item = dict(added, status="completed", arguments=arguments)
        events.append(ev("response.output_item.done", output_index=index, item=item))
        output.append(item)
    usage_obj = {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }
    finish = _finish(turn)
    if finish in ("length", "content_filter"):
        reason = "max_output_tokens" if finish == "length" else "content_filter"
        final = response("incomplete", output, usage_obj, {"reason": reason})
        events.append(ev("response.incomplete", response=final))
    else:
        events.append(ev("response.completed", response=response("completed", output, usage_obj, None)))
    return events


_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def _anthropic(turn: Turn, *, model: str, usage: TurnUsage, seed: str) -> list[bytes]:
    mid = turn.response_id or _id("msg_01", seed, 22)
    input_tokens = max(usage.prompt_tokens - usage.cached_input_tokens - usage.cache_write_tokens, 0)
    start_usage = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": usage.cache_write_tokens, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 1,
        "service_tier": "standard",
    }
    message = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    events = [_event("message_start", {"type": "message_start", "message": message}), _event("ping", {"type": "ping"})]
    index = 0

    def block(start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        events.append(
            _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
        )
        for delta in deltas:
            events.append(
                _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            )
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1

    if turn.reasoning:
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(turn.reasoning, turn.chunk_chars)]
        deltas.append({"type": "signature_delta", "signature": _signature(turn)})
        block({"type": "thinking", "thinking": "", "signature": ""}, deltas)
    if turn.text:
        block(
            {"type": "text", "text": ""},
            [{"type": "text_delta", "text": p} for p in _pieces(turn.text, turn.chunk_chars)],
        )
    for number, call in enumerate(turn.tool_calls):
        call_id = call.id or _id("toolu_01", f"{seed}:{number}", 22)
        pieces = _pieces(call.arguments_text(), turn.chunk_chars)
        block(
            {"type": "tool_use", "id": call_id, "name": call.name, "input": {}},
            [{"type": "input_json_delta", "partial_json": p} for p in pieces],
        )
    stop = _ANTHROPIC_STOP[_finish(turn)]
    delta_usage = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.completion_tokens,
    }
    events.append(
        _event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": delta_usage},
        )
    )
    events.append(_event("message_stop", {"type": "message_stop"}))
    return events


_GOOGLE_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP", "content_filter": "SAFETY"}


def _google(turn: Turn, *, model: str, usage: TurnUsage, seed: str) -> list[bytes]:
    rid = turn.response_id or _id("", seed, 22)
    prompt_usage = {"promptTokenCount": usage.prompt_tokens}
    if usage.cached_input_tokens:
        prompt_usage["cachedContentTokenCount"] = usage.cached_input_tokens

    def chunk(parts: list[dict[str, Any]], *, final: bool = False) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        usage_meta: dict[str, Any] = dict(prompt_usage)
        if final:
            candidate["finishReason"] = _GOOGLE_FINISH[_finish(turn)]
            candidates_tokens = usage.completion_tokens - usage.reasoning_tokens
            usage_meta.update(
                candidatesTokenCount=candidates_tokens, totalTokenCount=usage.prompt_tokens + usage.completion_tokens
            )
            if usage.reasoning_tokens:
                usage_meta["thoughtsTokenCount"] = usage.reasoning_tokens
        data = {"candidates": [candidate], "usageMetadata": usage_meta, "modelVersion": model, "responseId": rid}
        return _event(None, data, crlf=True)

    parts: list[list[dict[str, Any]]] = []
    signature = _signature(turn) if turn.reasoning else None
    parts += [[{"text": p, "thought": True}] for p in _pieces(turn.reasoning, turn.chunk_chars * 4)]
    if signature and not turn.tool_calls:
        parts.append([{"text": "", "thoughtSignature": signature}])
    parts += [[{"text": p}] for p in _pieces(turn.text, turn.chunk_chars * 4)]
    calls = []
    for number, call in enumerate(turn.tool_calls):
        part: dict[str, Any] = {"functionCall": {"name": call.name, "args": json.loads(call.arguments_text())}}
        if signature and number == 0:
            part["thoughtSignature"] = signature  # Gemini signs the first function call
        calls.append(part)
    if calls:
        parts.append(calls)  # parallel calls arrive together
    if not parts:
        parts.append([{"text": ""}])
    events = [chunk(p) for p in parts[:-1]]
    events.append(chunk(parts[-1], final=True))
    return events


_SYNTHS = {
    "openai_chat": (_openai_chat, 3),
    "openai_responses": (_openai_responses, 1),
    "anthropic": (_anthropic, 2),
    "google": (_google, 1),
}


def synthesize(*, api: str, turn: Turn, model: str, seed: str = "", prompt_chars: int = 0) -> WireResponse:
    """The wire response for `turn` in `api`'s format; `seed` makes the ids deterministic."""
    if api not in _SYNTHS:
        raise ValueError(f"Unknown API {api!r}")
    delays = {}
    if turn.chunk_delay is not None:
        delays["chunk_delay"] = turn.chunk_delay
    if turn.first_chunk_delay is not None:
        delays["first_chunk_delay"] = turn.first_chunk_delay
    if turn.error is not None and not turn.error.mid_stream:
        wire = _error_response(api=api, error=turn.error)
        wire.first_chunk_delay = delays.get("first_chunk_delay", 0.0)
        return wire
    build, tail = _SYNTHS[api]
    usage = turn_usage(turn, prompt_chars=prompt_chars)
    events = build(turn, model=model, usage=usage, seed=seed or f"{model}:{turn.text}:{turn.reasoning}")
    if turn.error is not None:
        # Some content, then the provider's in-stream error event, then nothing.
        events = [*events[: max(2, len(events) // 2)], _mid_stream_error_event(api=api, error=turn.error)]
        body = b"".join(events)
    else:
        body = _sse(events, truncate=turn.truncate, keep_tail=tail)
    return sse_response(body, **delays)
