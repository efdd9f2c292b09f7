"""The provider interface: request/result types, the streamed call, and the machinery shared by adapters.

An adapter turns an `LLMRequest` into an SDK call and the SDK's stream events into `StreamChunk`s and
one `LLMResult`. `ProviderCall` drives that: it measures time, watches for cancellation, maps every
failure to a `ProviderError` and always leaves a redacted `ProviderTraceData` in `call.trace`.

Timing: `LLMResult.request_start_ns` is wall-clock (`time.time_ns()`, epoch nanoseconds) so it can be
stored and compared with other timestamps; `ttft_ns` and `latency_ns` are durations measured with
`time.perf_counter_ns()` (monotonic). The request is sent when iteration starts, not when
`adapter.stream()` returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import httpx2

from config.redaction import redact, redact_text
from runner.providers.errors import ProviderCancelled, ProviderError, error_from_exception
from steps.values import ContentPart, MessageIn, ToolCall, Usage

logger = logging.getLogger(__name__)

API_OPENAI_CHAT = "openai_chat"
API_OPENAI_RESPONSES = "openai_responses"
API_ANTHROPIC = "anthropic"
API_GOOGLE = "google"
APIS: tuple[str, ...] = (API_OPENAI_CHAT, API_OPENAI_RESPONSES, API_ANTHROPIC, API_GOOGLE)

DEFAULT_TIMEOUT = httpx2.Timeout(600.0, connect=10.0)


@dataclass
class ToolSpec:
    """A function tool offered to the model; `parameters` is its JSON schema."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class LLMRequest:
    """One LLM call. `messages` is the whole history (system, user, assistant, tool)."""

    model: str
    messages: list[MessageIn]
    tools: list[ToolSpec] = field(default_factory=list)
    temperature: float | None = None
    max_output_tokens: int | None = None
    tool_choice: str | None = None  # "auto" | "required" | "none"


@dataclass(slots=True)
class StreamChunk:
    """A piece of the response as it arrives.

    `text` carries text or reasoning deltas. A tool-call chunk names its call by `tool_call_index`
    (0, 1, … in the order calls start); the first chunk of a call has `tool_call_id` and `tool_name`,
    later ones only `arguments_delta`.
    """

    kind: Literal["text", "reasoning", "tool_call"]
    text: str = ""
    tool_call_index: int | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    arguments_delta: str = ""


@dataclass
class LLMResult:
    """The outcome of a finished call. See the module docstring for the clocks behind the timings."""

    content: list[ContentPart]
    tool_calls: list[ToolCall]
    usage: Usage
    finish_reason_raw: str | None
    finish_reason: str | None
    response_id: str | None
    response_model: str | None
    ttft_ns: int | None
    latency_ns: int
    request_start_ns: int
    response_json: dict[str, Any] | None = None  # the assembled response, as stored in the trace (redacted)

    def summary(self) -> dict[str, Any]:
        """The JSON object `replay_stream` prints."""
        return {
            "usage": self.usage.as_counts(),
            "finish_reason_raw": self.finish_reason_raw,
            "finish_reason": self.finish_reason,
            "tool_calls": [call.model_dump(mode="json") for call in self.tool_calls],
            "content": [part.model_dump(mode="json") for part in self.content],
            "model": self.response_model,
            "response_id": self.response_id,
        }


@dataclass
class ProviderTraceData:
    """What is stored as the step's ProviderTrace; request and response are already redacted."""

    provider: str
    api: str
    model: str
    request_json: dict[str, Any]
    response_json: dict[str, Any] | None
    latency_ms: int
    error_type: str | None
    error_message: str | None


@dataclass
class Assembled:
    """What an accumulator hands back at the end of a stream (an LLMResult without the timings)."""

    content: list[ContentPart]
    tool_calls: list[ToolCall]
    usage: Usage
    finish_reason_raw: str | None
    finish_reason: str | None
    response_id: str | None
    response_model: str | None
    response_json: dict[str, Any] = field(default_factory=dict)


class StreamAccumulator:
    """Consumes one API's SDK events. Subclasses set `has_content` once content, reasoning or a tool
    call has been seen (that instant is the TTFT), return chunks from `feed` and raise
    `ProviderError` (malformed_stream) from `finish` when the stream lacked its terminal event."""

    has_content: bool = False

    def feed(self, event: Any) -> Sequence[StreamChunk] | None:
        raise NotImplementedError

    def finish(self) -> Assembled:
        raise NotImplementedError


@runtime_checkable
class ProviderAdapter(Protocol):
    provider_name: str
    api: str

    def stream(self, request: LLMRequest, *, cancel_event: CancelEvent | None = None) -> ProviderCall: ...


class CancelEvent(threading.Event):
    """The event that cancels a call (or a whole run): when set it also runs the callbacks registered with
    `on_set`, so an in-flight call aborts its blocked read at once and no thread has to poll the event."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks_lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._callbacks_lock:
            super().set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the event is set (now, if it is set already)."""
        with self._callbacks_lock:
            if not self.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def discard(self, callback: Callable[[], None]) -> None:
        with self._callbacks_lock, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


# --- per-call context: what the HTTP hooks saw, and how to abort a blocked read --------------------

_local = threading.local()


class CallContext:
    """State of one in-flight call, reachable from httpx2 hooks and transports in the calling thread."""

    __slots__ = ("_abort_callbacks", "aborted", "cancel_event", "request_body", "response")

    def __init__(self, cancel_event: CancelEvent | None) -> None:
        self.cancel_event = cancel_event
        self.request_body: bytes | None = None
        self.response: httpx2.Response | None = None
        self._abort_callbacks: list[Callable[[], None]] = []
        self.aborted = False

    def on_abort(self, callback: Callable[[], None]) -> None:
        self._abort_callbacks.append(callback)
        if self.aborted:  # cancelled while the call was being opened: abort what was opened since
            self._run_abort_callback(callback)

    def _run_abort_callback(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:  # best effort: the reader also checks the cancel event between chunks
            logger.debug("abort callback failed", exc_info=True)

    def abort(self) -> None:
        """Unblock a read that is waiting on the network or an in-memory delay (called when the cancel event is set,
        from the thread that sets it)."""
        if self.aborted:
            return
        self.aborted = True
        for callback in list(self._abort_callbacks):
            self._run_abort_callback(callback)
        response = self.response
        if response is not None:
            network_stream = response.extensions.get("network_stream")
            sock = network_stream.get_extra_info("socket") if network_stream is not None else None
            if isinstance(sock, socket.socket):
                # shutdown (not close) wakes a recv() blocked in another thread; the plain socket method
                # leaves an SSL object alone so the reader fails cleanly instead of racing on it.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)


def current_call_context() -> CallContext | None:
    """The call being opened in this thread (used by transports and HTTP hooks)."""
    return getattr(_local, "ctx", None)


def _on_request(request: httpx2.Request) -> None:
    ctx = current_call_context()
    if ctx is not None:
        with contextlib.suppress(httpx2.RequestNotRead):
            ctx.request_body = request.content


def _on_response(response: httpx2.Response) -> None:
    ctx = current_call_context()
    if ctx is not None:
        ctx.response = response


def make_http_client(
    *, transport: httpx2.BaseTransport | None = None, timeout: httpx2.Timeout | float | None = None
) -> httpx2.Client:
    """The httpx2 client every SDK client is given: our hooks capture the request body as sent."""
    return httpx2.Client(
        transport=transport,
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        event_hooks={"request": [_on_request], "response": [_on_response]},
        follow_redirects=False,
    )


OpenResult = tuple[Iterable[Any], Callable[[], None] | None]


class ProviderCall:
    """An iterator of `StreamChunk`s for one call.

    After iteration `result` is the `LLMResult`, or iteration raised a `ProviderError` (also kept in
    `error`); `trace` is set in both cases. `run()` drains the stream and returns the result.
    """

    def __init__(
        self,
        *,
        adapter: BaseAdapter,
        request: LLMRequest,
        cancel_event: CancelEvent | None,
        streaming: bool,
        before_send: Callable[[CallContext], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.request = request
        self.cancel_event = cancel_event
        self.streaming = streaming
        self.result: LLMResult | None = None
        self.error: ProviderError | None = None
        self.trace: ProviderTraceData | None = None
        self.request_start_ns: int | None = None
        self._before_send = before_send
        self._gen = self._run()

    def __iter__(self) -> Iterator[StreamChunk]:
        return self._gen

    def __next__(self) -> StreamChunk:
        return next(self._gen)

    def run(self) -> LLMResult:
        """Read the whole stream; return the result or raise the ProviderError."""
        for _ in self._gen:
            pass
        assert self.result is not None
        return self.result

    def close(self) -> None:
        """Stop reading; the trace records the call as cancelled."""
        self._gen.close()

    def _cancelled(self) -> bool:
        return self.cancel_event is not None and self.cancel_event.is_set()

    def _run(self) -> Iterator[StreamChunk]:
        adapter = self.adapter
        cancel = self.cancel_event
        ctx = CallContext(cancel)
        acc = adapter.new_accumulator()
        self.request_start_ns = time.time_ns()
        t0 = time.perf_counter_ns()
        ttft: int | None = None
        params: dict[str, Any] | None = None
        closer: Callable[[], None] | None = None
        error: ProviderError | None = None
        assembled: Assembled | None = None
        started = False
        try:
            if cancel is not None and cancel.is_set():
                raise ProviderCancelled("The call was cancelled before the request was sent.")
            # Building the request (image downloads) and the SDK client happen before the clock starts:
            # TTFT and latency measure the provider, from sending the request on.
            params = adapter.build_request(self.request)
            adapter.client()
            if cancel is not None:
                cancel.on_set(ctx.abort)  # registered before the last check: a cancel from here on aborts the call
                if cancel.is_set():
                    raise ProviderCancelled("The call was cancelled before the request was sent.")
            self.request_start_ns = time.time_ns()
            t0 = time.perf_counter_ns()
            previous = getattr(_local, "ctx", None)
            _local.ctx = ctx
            try:
                if self._before_send is not None:
                    self._before_send(ctx)
                events, closer = adapter.open_stream(params, streaming=self.streaming)
            finally:
                _local.ctx = previous
            started = True
            feed = acc.feed
            for event in events:
                if cancel is not None and cancel.is_set():
                    raise ProviderCancelled()
                chunks = feed(event)
                if ttft is None and acc.has_content:
                    ttft = time.perf_counter_ns() - t0
                if chunks:
                    yield from chunks
            if cancel is not None and cancel.is_set():
                raise ProviderCancelled()
            assembled = acc.finish()
        except GeneratorExit:
            error = ProviderCancelled("The consumer stopped reading the stream.")
            raise
        except ProviderError as exc:
            error = exc if not self._cancelled() or isinstance(exc, ProviderCancelled) else ProviderCancelled()
        except Exception as exc:
            if self._cancelled():
                error = ProviderCancelled()
            else:
                if not isinstance(exc, (httpx2.HTTPError, ValueError)) and not _is_sdk_error(exc):
                    logger.exception("Unexpected error while reading a %s stream", adapter.api)
                error = error_from_exception(exc, mid_stream=started and ctx.response is not None)
                if error is not exc:
                    error.__cause__ = exc  # keep the SDK's exception for debugging
        finally:
            latency = time.perf_counter_ns() - t0
            if cancel is not None:
                cancel.discard(ctx.abort)
            if closer is not None:
                try:
                    closer()
                except Exception:
                    logger.debug("closing the stream failed", exc_info=True)
            if error is not None and isinstance(error.result, Assembled):
                error.result = self._result(error.result, ttft=ttft, latency=latency)
            if assembled is not None:
                self.result = self._result(assembled, ttft=ttft, latency=latency)
            self.error = error
            self.trace = self._trace(ctx=ctx, params=params, error=error, latency=latency)
        if error is not None:
            raise error

    def _result(self, assembled: Assembled, *, ttft: int | None, latency: int) -> LLMResult:
        return LLMResult(
            content=assembled.content,
            tool_calls=assembled.tool_calls,
            usage=assembled.usage,
            finish_reason_raw=assembled.finish_reason_raw,
            finish_reason=assembled.finish_reason,
            response_id=assembled.response_id,
            response_model=assembled.response_model,
            ttft_ns=ttft,
            latency_ns=latency,
            request_start_ns=self.request_start_ns or 0,
            response_json=redact(assembled.response_json) if assembled.response_json else None,
        )

    def _trace(
        self, *, ctx: CallContext, params: dict[str, Any] | None, error: ProviderError | None, latency: int
    ) -> ProviderTraceData:
        request_json: dict[str, Any] = {}
        if ctx.request_body:
            try:
                request_json = json.loads(ctx.request_body)
            except ValueError:
                request_json = {"body": ctx.request_body[:10_000].decode("utf-8", "replace")}
        elif params is not None:
            request_json = json_safe(params)
        response_json: dict[str, Any] | None = None
        if self.result is not None:
            response_json = self.result.response_json
        elif error is not None:
            if isinstance(error.result, LLMResult):
                response_json = error.result.response_json
            elif "body" in error.details:
                body = error.details["body"]
                response_json = body if isinstance(body, dict) else {"body": body}
        return ProviderTraceData(
            provider=self.adapter.provider_name,
            api=self.adapter.api,
            model=self.request.model,
            request_json=redact(request_json),
            # A result's response_json was redacted when the result was built.
            response_json=response_json if self.result is not None or response_json is None else redact(response_json),
            latency_ms=latency // 1_000_000,
            error_type=error.error_type if error is not None else None,
            error_message=redact_text(error.message) if error is not None else None,
        )


def _is_sdk_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("openai", "anthropic", "google.genai"))


def json_safe(value: Any) -> Any:
    """A JSON-serializable copy (bytes become a length note, models are dumped)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if hasattr(value, "model_dump"):
        return json_safe(value.model_dump(mode="json", exclude_none=True))
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class BaseAdapter:
    """Shared adapter plumbing. Subclasses implement `build_request`, `open_stream` and `new_accumulator`.

    `streaming=False` makes the adapter use the SDK's non-streaming call; the response object is then
    replayed through the same accumulator as stream events (used for recorded JSON bodies).
    """

    provider_name: str = ""
    api: str = ""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: httpx2.Timeout | float | None = None,
        transport: httpx2.BaseTransport | None = None,
        image_fetcher: Any | None = None,
        streaming: bool = True,
        provider_name: str | None = None,
    ) -> None:
        from runner.providers.images import ImageFetcher

        self.api_key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.transport = transport
        self.image_fetcher = image_fetcher or ImageFetcher()
        self.streaming = streaming
        if provider_name:
            self.provider_name = provider_name
        self._client: Any = None
        self._client_lock = threading.Lock()

    def stream(self, request: LLMRequest, *, cancel_event: CancelEvent | None = None) -> ProviderCall:
        """Start a call; iterate the returned ProviderCall for chunks, then read `.result` and `.trace`."""
        return ProviderCall(adapter=self, request=request, cancel_event=cancel_event, streaming=self.streaming)

    def client(self) -> Any:
        """The SDK client, built on first use (a missing API key is reported as a call error, not here).

        `_make_client` also touches the SDK resource it uses, so its lazy import is not timed as TTFT
        (`get_adapter` also runs `replay.warm_up` once per API and process, for the SDK's lazy models).
        """
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client(make_http_client(transport=self.transport, timeout=self.timeout))
        return self._client

    def _make_client(self, http_client: httpx2.Client) -> Any:
        raise NotImplementedError

    def build_request(self, request: LLMRequest) -> dict[str, Any]:
        """The SDK call's keyword arguments for `request` (images fetched, history converted)."""
        raise NotImplementedError

    def open_stream(self, params: dict[str, Any], *, streaming: bool) -> OpenResult:
        """Send the request; return the events to feed the accumulator and a close function."""
        raise NotImplementedError

    def new_accumulator(self) -> StreamAccumulator:
        raise NotImplementedError


def usage_dict(obj: Any) -> dict[str, Any] | None:
    """An SDK usage object as the provider sent it (fields it did not send are left out)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    if to_dict is not None:
        return to_dict()
    return obj.model_dump(mode="json", by_alias=True, exclude_none=True)


def missing_key_error(env_var: str) -> ProviderError:
    return ProviderError(f"{env_var} is not set.", error_type="authentication", retryable=False)
