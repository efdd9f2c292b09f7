"""Server-Sent Events framing for run streams."""

import json
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse

from agents.streams import DONE, follow


def frame(event: dict[str, Any]) -> str:
    if event.get("message_type") == "error_message":
        return f"event: error\ndata: {json.dumps(event, default=str)}\n\n"
    return f"data: {json.dumps(event, default=str)}\n\n"


def relay(run_id: str, *, after: int = 0) -> Iterator[str]:
    """The run's events from `after` on as SSE frames, pings while idle, `[DONE]` at the end."""
    idle_ms = int(settings.STEPLENS_SSE_PING_SECONDS * 1000)
    for event in follow(run_id, after=after, idle_ms=idle_ms):
        if event is None:
            yield ": ping\n\n"
        elif event.get("type") == DONE:
            yield "data: [DONE]\n\n"
        else:
            yield frame(event)


def sse_response(frames: Iterator[str], *, request_id: str | None = None) -> StreamingHttpResponse:
    response = StreamingHttpResponse(frames, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # let nginx pass each event through at once
    if request_id:
        response["X-Request-ID"] = request_id
    return response
