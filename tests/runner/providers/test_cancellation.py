"""A cancelled call stops within one second, whether it is between chunks or blocked on the network."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from runner.providers import CancelEvent, ProviderCancelled, Scenario, ScriptedAdapter, Turn, synthesize
from runner.providers.replay import adapter_for_api
from tests.runner.providers.conftest import user_request


def _cancel_after(seconds: float) -> tuple[CancelEvent, list[float]]:
    event = CancelEvent()
    when: list[float] = []

    def fire() -> None:
        when.append(time.monotonic())
        event.set()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return event, when


def _run_until_cancelled(call) -> float:
    with pytest.raises(ProviderCancelled):
        for _ in call:
            pass
    return time.monotonic()


def test_a_slow_stream_stops_within_a_second_of_cancellation():
    scenario = Scenario("test-slow", "anthropic", "claude-sonnet-4-6", [Turn(text="word " * 200, chunk_chars=5)])
    adapter = ScriptedAdapter(scenario, chunk_delay=0.2)
    cancel, when = _cancel_after(0.5)

    call = adapter.stream(user_request(), cancel_event=cancel)
    stopped = _run_until_cancelled(call)

    assert stopped - when[0] < 1.0
    assert call.trace.error_type == "cancelled" and call.result is None


def test_a_call_waiting_for_its_first_chunk_stops_within_a_second_of_cancellation():
    scenario = Scenario("test-stalled", "google", "gemini-2.5-flash", [Turn(text="late")])
    adapter = ScriptedAdapter(scenario, first_chunk_delay=30.0)
    cancel, when = _cancel_after(0.3)

    call = adapter.stream(user_request(), cancel_event=cancel)
    stopped = _run_until_cancelled(call)

    assert stopped - when[0] < 1.0
    assert call.trace.error_type == "cancelled"


def test_a_call_cancelled_before_it_starts_sends_nothing():
    scenario = Scenario("test-never", "openai_chat", "gpt-4o-mini", [Turn(text="never")])
    adapter = ScriptedAdapter(scenario)
    cancel = CancelEvent()
    cancel.set()

    call = adapter.stream(user_request(), cancel_event=cancel)

    with pytest.raises(ProviderCancelled):
        call.run()
    assert len(adapter.transport.requests) == 0
    assert call.trace.error_type == "cancelled"


def test_a_consumer_that_stops_reading_leaves_a_cancelled_trace():
    scenario = Scenario(
        "test-abandoned", "openai_responses", "gpt-5-mini", [Turn(text="many words " * 50, chunk_chars=4)]
    )
    call = ScriptedAdapter(scenario).stream(user_request())

    next(iter(call))
    call.close()

    assert call.trace.error_type == "cancelled"


class _StallingServer:
    """A real HTTP server on localhost that sends the response headers and one SSE event, then goes quiet."""

    def __init__(self, first_event: bytes) -> None:
        self.first_event = first_event
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                + f"{len(self.first_event):x}\r\n".encode()
                + self.first_event
                + b"\r\n"
            )
            self.stop.wait(20)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def stalling_server() -> Iterator[type[_StallingServer]]:
    servers: list[_StallingServer] = []

    def make(first_event: bytes) -> _StallingServer:
        server = _StallingServer(first_event)
        servers.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in servers:
        server.close()


@pytest.mark.parametrize(
    ("api", "path"),
    [("openai_chat", "/v1"), ("openai_responses", "/v1"), ("anthropic", ""), ("google", "")],
)
def test_a_stream_blocked_on_a_silent_socket_stops_within_a_second_of_cancellation(stalling_server, api, path):
    events = synthesize(api=api, turn=Turn(text="first words and then silence"), model="m").body
    first = events.split(b"\r\n\r\n" if api == "google" else b"\n\n")[0] + (b"\r\n\r\n" if api == "google" else b"\n\n")
    server = stalling_server(first)
    adapter = adapter_for_api(
        api, api_key="sk-test-0123456789abcdefghijkl", base_url=f"http://127.0.0.1:{server.port}{path}"
    )
    cancel, when = _cancel_after(0.5)

    call = adapter.stream(user_request(), cancel_event=cancel)
    stopped = _run_until_cancelled(call)

    assert stopped - when[0] < 1.0
    assert call.trace.error_type == "cancelled"


def test_a_cancel_event_runs_its_callbacks_when_set_and_at_once_when_set_already():
    event = CancelEvent()
    seen: list[str] = []
    event.on_set(lambda: seen.append("registered"))
    dropped = lambda: seen.append("discarded")  # noqa: E731
    event.on_set(dropped)
    event.discard(dropped)

    event.set()
    event.on_set(lambda: seen.append("late"))

    assert seen == ["registered", "late"]
