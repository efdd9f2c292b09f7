"""An in-memory httpx2 transport: serves provider wire bytes to the real SDK clients without a network.

Used by the scripted provider, `replay_stream`, the tests and the benchmark. A response body is cut
into SSE events (one chunk each) and can be paced with delays; a pending delay wakes up as soon as the
call is cancelled, so a cancelled stream stops at once.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx2

from runner.providers.base import current_call_context

_EVENT_END = re.compile(rb"(?<=\n\n)|(?<=\r\n\r\n)")


@dataclass
class WireResponse:
    """One HTTP response as a provider would send it.

    `chunk_delay` is the pause (seconds) before each SSE event after the first, `first_chunk_delay`
    the pause before the first one (think "time to first token").
    """

    body: bytes
    status_code: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay: float = 0.0
    first_chunk_delay: float = 0.0
    _chunks: tuple[bytes, list[bytes]] | None = field(default=None, repr=False, compare=False)

    @property
    def is_event_stream(self) -> bool:
        content_type = self.headers.get("content-type") or self.headers.get("Content-Type") or ""
        return "event-stream" in content_type

    def chunks(self) -> list[bytes]:
        """The body as the pieces the transport yields: one per SSE event, or the whole JSON body."""
        cached = self._chunks
        if cached is not None and cached[0] is self.body:
            return cached[1]
        pieces = [piece for piece in _EVENT_END.split(self.body) if piece] if self.is_event_stream else [self.body]
        self._chunks = (self.body, pieces)
        return pieces


def sse_response(body: bytes, **kwargs: object) -> WireResponse:
    """A 200 `text/event-stream` response."""
    headers = {"content-type": "text/event-stream; charset=utf-8"}
    return WireResponse(body=body, headers=headers, **kwargs)  # type: ignore[arg-type]


def json_response(body: bytes, *, status_code: int = 200, headers: dict[str, str] | None = None) -> WireResponse:
    """A JSON response (a non-streaming body, or an error)."""
    return WireResponse(
        body=body, status_code=status_code, headers={"content-type": "application/json", **(headers or {})}
    )


class _PacedStream(httpx2.SyncByteStream):
    def __init__(self, chunks: list[bytes], *, delay: float, first_delay: float) -> None:
        self._chunks = chunks
        self._delay = delay
        self._first_delay = first_delay
        self._aborted = threading.Event()

    def abort(self) -> None:
        self._aborted.set()

    def __iter__(self) -> Iterator[bytes]:
        aborted = self._aborted
        delay = self._first_delay
        for chunk in self._chunks:
            if delay > 0 and aborted.wait(delay):
                return  # cancelled: end the body early, the caller sees the cancel event
            if aborted.is_set():
                return
            yield chunk
            delay = self._delay


Responder = Callable[[httpx2.Request], WireResponse]


class InMemoryTransport(httpx2.BaseTransport):
    """Answers every request with a `WireResponse`.

    The response comes from, in order: one armed for this thread with `arm()` (the scripted provider
    arms each call's response right before the SDK sends it), else `responder` (a fixed response or a
    function of the request). The last requests are kept in `requests` for tests.
    """

    def __init__(self, responder: WireResponse | Responder | None = None, *, keep_requests: int = 50) -> None:
        self._responder = responder
        self._local = threading.local()
        self.requests: deque[httpx2.Request] = deque(maxlen=keep_requests)

    def arm(self, response: WireResponse) -> None:
        """Serve `response` to the next request sent from this thread."""
        self._local.armed = response

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        self.requests.append(request)
        wire = getattr(self._local, "armed", None)
        if wire is not None:
            self._local.armed = None
        elif isinstance(self._responder, WireResponse):
            wire = self._responder
        elif self._responder is not None:
            wire = self._responder(request)
        else:
            raise httpx2.ConnectError("InMemoryTransport has no response for this request", request=request)
        stream = _PacedStream(wire.chunks(), delay=wire.chunk_delay, first_delay=wire.first_chunk_delay)
        ctx = current_call_context()
        if ctx is not None:
            ctx.on_abort(stream.abort)
        return httpx2.Response(wire.status_code, headers=wire.headers, stream=stream, request=request)
