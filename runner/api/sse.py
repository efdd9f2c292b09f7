"""Server-Sent Events framing for run streams, and the renderer that lets browsers ask for them."""

import json
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Organization
from agents.selectors import run_get, run_stream_ended
from config.db import connection_release
from config.errors import ApplicationError
from runner.loop import run_end_events
from runner.streams import DONE, MAX_SEQ_ID, follow, stream_closed


def frame(event: dict[str, Any]) -> str:
    if event.get("message_type") == "error_message":
        return f"event: error\ndata: {json.dumps(event, default=str)}\n\n"
    return f"data: {json.dumps(event, default=str)}\n\n"


def relay(run_id: str, *, organization: Organization, after: int = 0) -> Iterator[str]:
    """The run's events from `after` on as SSE frames, pings while idle, `[DONE]` at the end.

    The stream ends even when no `done` event will come: once the run is final in the database (checked at
    the start and at every idle tick) what is left is sent, then the run's own end (its error, stop reason and
    usage) unless the stream already carried it, then `[DONE]`.
    """
    idle_ms = int(settings.STEPLENS_SSE_PING_SECONDS * 1000)

    def run_ended() -> bool:
        # The stream waits on Redis between these checks: it holds no database connection while it waits.
        ended = run_stream_ended(run_id=run_id)
        connection_release()
        return ended

    for event in follow(run_id, after=after, idle_ms=idle_ms, run_ended=run_ended):
        if event is None:
            yield ": ping\n\n"
        elif event.get("type") == DONE:
            yield "data: [DONE]\n\n"
            return
        else:
            yield frame(event)
    if not stream_closed(run_id):
        run = run_get(organization=organization, run_id=run_id)
        for message_type, payload in run_end_events(run=run):
            yield frame({"message_type": message_type, "run_id": run_id, **payload})
    yield "data: [DONE]\n\n"


def parse_starting_after(raw: str) -> int:
    """The seq_id a client resumes after: an integer from 0 to 2^63-1, else a 400 naming the parameter."""
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_SEQ_ID:
        raise ApplicationError(
            "Invalid parameter.", extra={"starting_after": f"must be an integer from 0 to {MAX_SEQ_ID}"}
        )
    return int(raw)


def sse_response(frames: Iterator[str], *, request_id: str | None = None) -> StreamingHttpResponse:
    response = StreamingHttpResponse(frames, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # let nginx pass each event through at once
    if request_id:
        response["X-Request-ID"] = request_id
    return response


class EventStreamRenderer(BaseRenderer):
    """Accepts `Accept: text/event-stream` (what every browser EventSource sends) in content negotiation.

    The stream itself is a StreamingHttpResponse and never goes through a renderer; only the JSON error answers
    before a stream starts would, and `EventStreamMixin` renders those as JSON.
    """

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return JSONRenderer().render(data)


class EventStreamMixin:
    """For views answering with an SSE stream: negotiate text/event-stream, but send errors as JSON."""

    renderer_classes = [JSONRenderer, EventStreamRenderer]

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(response, Response) and isinstance(
            getattr(request, "accepted_renderer", None), EventStreamRenderer
        ):
            request.accepted_renderer, request.accepted_media_type = JSONRenderer(), JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)
