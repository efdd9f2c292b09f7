"""One trace from the HTTP request through the Celery task to every step, exported to a real receiver.

A gunicorn web process and a Celery worker process, both configured only by the standard OTEL_*
variables, run an agent; the receiver must get one trace in which the HTTP server span is the
ancestor of `invoke_agent`, whose children are the `chat` and `execute_tool` spans, and each step
stores that trace's id and its own chat span id.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.db import connection

from accounts.services import api_key_create
from agents.services import agent_create
from steps.models import Step
from tests.factories import OrganizationFactory

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(receiver_endpoint: str, redis_url: str) -> dict[str, str]:
    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DJANGO_DEBUG": "false",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "CELERY_BROKER_URL": redis_url,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "REDIS_URL": redis_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver_endpoint,
        "OTEL_SERVICE_NAME": "steplens-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the web process did not start")


def _attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.string_value or value.int_value or value.double_value or value.bool_value
    return out


def test_one_trace_from_the_http_request_through_the_worker_to_every_step(
    otlp_http_receiver, redis_url, postgres, transactional_db
):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    organization = OrganizationFactory()
    _, key = api_key_create(organization=organization)
    agent = agent_create(
        organization=organization, name="traced", model_handle="scripted/weather-openai", tools=["get_weather"]
    )
    env = _env(otlp_http_receiver.endpoint, redis_url)
    port = _free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-w", "1", "-b", f"127.0.0.1:{port}",
         "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "prefork", "-c", "1", "-Q", "runs",
         "--without-mingle", "--without-gossip", "-l", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_for_port(port, web)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/agents/{agent.pk}/messages",
            data=json.dumps({"messages": [{"role": "user", "content": "Weather in Paris?"}]}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Request-ID": "req-e2e"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            body = json.loads(response.read())
        assert body["stop_reason"] == "end_turn"

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = [s.name for s in otlp_http_receiver.spans()]
            if names.count("chat gpt-4o-mini") == 2 and any(n.startswith("POST") for n in names):
                break
            time.sleep(0.2)
    finally:
        for process in (worker, web):
            process.terminate()
        for process in (worker, web):
            process.wait(timeout=30)

    spans = otlp_http_receiver.spans()
    by_id = {s.span_id: s for s in spans}
    (agent_span,) = [s for s in spans if s.name == "invoke_agent traced"]
    chats = [s for s in spans if s.name == "chat gpt-4o-mini"]
    (tool,) = [s for s in spans if s.name == "execute_tool get_weather"]
    assert len(chats) == 2
    trace_id = agent_span.trace_id
    assert all(s.trace_id == trace_id for s in [*chats, tool])
    assert all(s.parent_span_id == agent_span.span_id for s in chats)
    assert tool.parent_span_id in {c.span_id for c in chats} | {agent_span.span_id}

    # Walk up from invoke_agent: the Celery task span, then the HTTP request span of the web process.
    ancestors = []
    parent = by_id.get(agent_span.parent_span_id)
    while parent is not None:
        ancestors.append(parent)
        parent = by_id.get(parent.parent_span_id)
    assert any(s.kind == s.SPAN_KIND_SERVER and s.name.startswith("POST") for s in ancestors), [
        s.name for s in ancestors
    ]
    assert any("run_agent" in s.name for s in ancestors), [s.name for s in ancestors]

    chat_attrs = _attrs(chats[0])
    assert chat_attrs["gen_ai.provider.name"] == "openai"
    assert chat_attrs["steplens.request_id"] == "req-e2e"
    assert chat_attrs["gen_ai.usage.input_tokens"] > 0
    assert "gen_ai.response.time_to_first_chunk" in chat_attrs

    steps = Step.objects.filter(run_id=body["run_id"]).order_by("step_number")
    assert [s.trace_id for s in steps] == [trace_id.hex()] * 2
    assert {s.span_id for s in steps} == {c.span_id.hex() for c in chats}
