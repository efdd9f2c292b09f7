"""Fixtures for monitors: a real HTTP receiver for webhooks, a real SMTP server, and agents whose steps can be
switched from succeeding to failing (the scripted provider's context-window error, a 400 that is not retried)."""

import itertools
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.services import agent_create
from runner.providers import ErrorSpec, Scenario, Turn, register_scenario, unregister_scenario
from runner.providers.scripted import echo_turn

_names = itertools.count()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver on a free loopback port: records every POST and answers the next queued status."""

    url: str
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def payloads(self) -> list[dict]:
        with self.lock:
            return [r.json() for r in self.requests]


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:
    settings.STEPLENS_NOTIFY_ALLOW_PRIVATE = True  # the receiver listens on loopback
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.requests.append(Received(headers=dict(self.headers.items()), body=body))
                status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Smtp:
    host: str
    port: int
    messages: list = field(default_factory=list)


@pytest.fixture
def smtp_server(settings) -> Iterator[Smtp]:
    """A real SMTP server (aiosmtpd) on a free loopback port, with Django's SMTP backend pointed at it."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    with socket.socket() as probe:  # aiosmtpd's readiness check connects to the port it was given, so not 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = Smtp(host="127.0.0.1", port=port)

    class Keep(Message):
        def handle_message(self, message) -> None:
            state.messages.append(message)

    controller = Controller(Keep(), hostname=state.host, port=state.port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = state.host, state.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    yield state
    controller.stop()


@dataclass
class Switch:
    """Whether the switchable scenario's calls fail."""

    failing: bool = False


@pytest.fixture
def switchable() -> Iterator[tuple[str, Switch]]:
    """A scripted model handle whose calls echo, or fail with a context-window error while `switch.failing`."""
    switch = Switch()
    name = f"monitor-test-{next(_names)}"

    def turn(request):
        if switch.failing:
            return Turn(error=ErrorSpec(kind="context_window"))
        return echo_turn(request)

    register_scenario(Scenario(name, "openai_chat", "gpt-4o-mini", [turn], repeat_last=True))
    yield f"scripted/{name}", switch
    unregister_scenario(name)


@pytest.fixture
def make_agent():
    def make(organization, model_handle: str, **values):
        values.setdefault("name", f"agent-{next(_names)}")
        return agent_create(organization=organization, model_handle=model_handle, **values)

    return make
