"""`POST /v1/chat/completions`: the OpenAI chat-completions format in front of a Steplens agent.

`model` names an agent (its name or id). Every call becomes a recorded run; tools run inside the agent.
"""

import json
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_organization
from agents import selectors
from agents.models import Run, RunStatus, StopReason
from runner import loop, services
from runner.api.serializers import CHAT_ROLES, ChatRequestSerializer
from runner.api.sse import sse_response
from runner.streams import DONE, follow
from steps.selectors import run_messages


def _finish_reason(run: Run) -> str:
    return "length" if run.stop_reason == StopReason.MAX_TOKENS_EXCEEDED else "stop"


def _usage(run: Run) -> dict[str, Any]:
    totals = loop.run_usage(run=run)
    return {
        # The chat-completions format requires these three counts; the details may be null (not reported).
        "prompt_tokens": totals["prompt_tokens"] or 0,
        "completion_tokens": totals["completion_tokens"] or 0,
        "total_tokens": totals["total_tokens"] or 0,
        "prompt_tokens_details": {"cached_tokens": totals["cached_input_tokens"]},
        "completion_tokens_details": {"reasoning_tokens": totals["reasoning_tokens"]},
    }


def _reply_text(run: Run) -> str:
    """What the agent said: its last text answer, or the message it sent through send_message."""
    for message in run_messages(run_id=run.pk, role="assistant", newest_first=True):
        for call in message.tool_calls or []:
            if call["function"]["name"] == "send_message":
                try:
                    return str(json.loads(call["function"]["arguments"]).get("message", ""))
                except (ValueError, AttributeError):
                    return call["function"]["arguments"]
        text = "".join(p.get("text", "") for p in message.content or [] if p.get("type") == "text")
        if text:
            return text
    return ""


def _chunk(run: Run, model: str, created: int, delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": f"chatcmpl-{run.pk}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


def _stream(run: Run, model: str, include_usage: bool) -> Iterator[str]:
    created = int(time.time())
    yield _chunk(run, model, created, {"role": "assistant", "content": ""})
    streamed_text = False
    idle_ms = int(settings.STEPLENS_SSE_PING_SECONDS * 1000)
    for event in follow(run.pk, idle_ms=idle_ms, run_ended=lambda: selectors.run_stream_ended(run_id=run.pk)):
        if event is None:
            yield ": ping\n\n"
            continue
        if event.get("type") == DONE:
            break
        kind = event.get("message_type")
        if kind == "assistant_message" and event.get("content"):
            streamed_text = True
            yield _chunk(run, model, created, {"content": event["content"]})
        elif kind == "error_message":
            error = {"error": {"message": event.get("message"), "type": event.get("error_type")}}
            yield f"data: {json.dumps(error)}\n\n"
    run.refresh_from_db()
    if not streamed_text:
        text = _reply_text(run)
        if text:
            yield _chunk(run, model, created, {"content": text})
    yield _chunk(run, model, created, {}, finish=_finish_reason(run))
    if include_usage:
        usage_chunk = {
            "id": f"chatcmpl-{run.pk}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(run),
        }
        yield f"data: {json.dumps(usage_chunk)}\n\n"
    yield "data: [DONE]\n\n"


_CONTENT_PART = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
            "required": ["type", "text"],
        },
        {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["image_url"]},
                "image_url": {
                    "type": "object",
                    "properties": {"url": {"type": "string", "pattern": "^(?:https?://|data:)"}},
                    "required": ["url"],
                },
            },
            "required": ["type", "image_url"],
        },
    ]
}
# What ChatRequestSerializer accepts (the OpenAI request format, the parts Steplens uses; other keys are ignored).
CHAT_REQUEST_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "minLength": 1, "description": "The name or id of a Steplens agent."},
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "role": {"type": "string", "enum": list(CHAT_ROLES)},
                    "content": {
                        "oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": _CONTENT_PART}]
                    },
                },
                "required": ["role", "content"],
            },
        },
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}, "nullable": True},
        "user": {"type": "string", "nullable": True},
    },
    "required": ["model", "messages"],
}
_USAGE = {
    "type": "object",
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": {
            "type": "object",
            "properties": {"cached_tokens": {"type": "integer", "nullable": True}},
        },
        "completion_tokens_details": {
            "type": "object",
            "properties": {"reasoning_tokens": {"type": "integer", "nullable": True}},
        },
    },
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
}
CHAT_COMPLETION_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["chat.completion"]},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "message": {
                        "type": "object",
                        "properties": {
                            "role": {"type": "string", "enum": ["assistant"]},
                            "content": {"type": "string"},
                        },
                        "required": ["role", "content"],
                    },
                    "finish_reason": {"type": "string", "enum": ["stop", "length", "error"]},
                },
                "required": ["index", "message", "finish_reason"],
            },
        },
        "usage": _USAGE,
        "error": {
            "type": "object",
            "description": "Why the run failed (finish_reason `error` only).",
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "run_id": {"type": "string"},
                "stop_reason": {"type": "string", "nullable": True},
            },
            "required": ["run_id"],
        },
    },
    "required": ["id", "object", "created", "model", "choices", "usage"],
}


class ChatCompletionsApi(APIView):
    """OpenAI-compatible chat completions backed by an agent run (streaming and not)."""

    @extend_schema(
        request={"application/json": CHAT_REQUEST_SCHEMA},
        responses={
            (200, "application/json"): CHAT_COMPLETION_SCHEMA,
            (200, "text/event-stream"): OpenApiTypes.STR,
        },
        extensions={"x-error-statuses": [404], "x-request-body-required": True},
    )
    def post(self, request: Request):
        serializer = ChatRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        model = data["model"]
        organization = request_organization(request)
        agent = selectors.agent_find(organization=organization, name_or_id=model)
        run = services.run_start(
            organization=organization,
            agent=agent,
            messages=[dict(message) for message in data["messages"]],
            request_id=request._request.request_id,
            user_id=request.headers.get("X-User-ID") or data["user"] or None,
        )
        if data["stream"]:
            loop.run_dispatch(run=run, wait=False)
            return sse_response(_stream(run, model, data["include_usage"]), request_id=run.request_id)
        loop.run_dispatch(run=run, wait=True)
        run = services.run_wait(run=run, timeout=settings.STEPLENS_SYNC_WAIT_SECONDS)
        return Response(_completion(run, model))


def _completion(run: Run, model: str) -> dict[str, Any]:
    """The chat.completion of a run that stopped. A failed run is an answer too (the request was served and the
    run recorded), as gateways such as OpenRouter give it: finish_reason `error` and the run's `error`."""
    failed = run.status == RunStatus.FAILED
    return {
        "id": f"chatcmpl-{run.pk}",
        "object": "chat.completion",
        "created": int(run.created_at.timestamp()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "" if failed else _reply_text(run)},
                "finish_reason": "error" if failed else _finish_reason(run),
            }
        ],
        "usage": _usage(run),
    } | ({"error": {**(run.error or {}), "run_id": run.pk, "stop_reason": run.stop_reason}} if failed else {})
