"""SSE streams served by a real gunicorn (gthread) live through silence and a Redis restart, and always end.

Real processes on loopback: gunicorn, a prefork Celery worker, a Redis of the test's own as broker and another as
the stream relay (restarted mid-stream), the test's PostgreSQL database. Every request sends
`Accept: text/event-stream`, as a browser's EventSource does.
"""

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from agents.models import Run, RunStatus
from agents.services import agent_create
from tests.faults.otlp_support import start_gunicorn
from tests.faults.runs_support import (
    OwnRedis,
    count,
    database_url,
    start_runs_worker,
    stop_services,
    worker_env,
)

pytestmark = [pytest.mark.faults, pytest.mark.worker]

# Longer than redis-py's default socket timeout (5 s), which used to cut every stream idle that long.
PING_SECONDS = 8
SSE = {"Accept": "text/event-stream"}


@dataclass
class Stack:
    base: str
    headers: dict[str, str]
    env: dict[str, str]
    stream_redis: OwnRedis
    logs: object
    services: list = field(default_factory=list)

    def start_worker(self) -> None:
        self.services.append(start_runs_worker(self.env, self.logs, name="worker"))


@pytest.fixture
def stack(postgres, transactional_db, api_key, tmp_path) -> Iterator[Stack]:
    broker, stream_redis = OwnRedis(), OwnRedis()
    broker.start()
    stream_redis.start()
    env = worker_env(
        database_url(), broker_url=broker.url, redis_url=stream_redis.url,
        STEPLENS_SSE_PING_SECONDS=str(PING_SECONDS), STEPLENS_SLOW_FIRST_TOKEN_SECONDS="12",
    )  # fmt: skip
    web, port = start_gunicorn(env, tmp_path, workers=1, threads=8)
    headers = {"Authorization": f"Bearer {api_key}", **SSE}
    stack = Stack(f"http://127.0.0.1:{port}", headers, env, stream_redis, tmp_path, [web])
    try:
        yield stack
    finally:
        stop_services(stack.services)
        broker.stop()
        stream_redis.stop()


@dataclass
class Received:
    events: list[dict] = field(default_factory=list)
    pings: int = 0
    done: bool = False
    errors: list[dict] = field(default_factory=list)


def _read(response: requests.Response, received: Received, *, on_event=None) -> None:
    """Read SSE frames as they arrive until `[DONE]`; a read timeout (30 s without a byte) fails the test."""
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"].startswith("text/event-stream")
    buffer = ""
    for chunk in response.iter_content(chunk_size=None, decode_unicode=True):
        buffer += chunk
        while "\n\n" in buffer:
            frame, buffer = buffer.split("\n\n", 1)
            if frame.startswith(":"):
                received.pings += 1
                continue
            data = next(line[6:] for line in frame.split("\n") if line.startswith("data: "))
            if data == "[DONE]":
                received.done = True
                return
            event = json.loads(data)
            (received.errors if frame.startswith("event: error") else received.events).append(event)
            if on_event is not None:
                on_event(event)


def _agent(organization, model_handle: str):
    return agent_create(organization=organization, name=model_handle.split("/")[-1], model_handle=model_handle)


def _send(stack: Stack, agent, text: str) -> requests.Response:
    body = {"messages": [{"role": "user", "content": text}]}
    return requests.post(
        f"{stack.base}/v1/agents/{agent.pk}/messages/stream", json=body, headers=stack.headers, stream=True,
        timeout=(5, 30),
    )  # fmt: skip


def test_a_stream_silent_in_the_queue_and_before_the_first_token_lives_on_pings(stack, organization):
    agent = _agent(organization, "scripted/slow-first-token")
    received = Received()
    started = time.monotonic()
    with _send(stack, agent, "say something after a long silence") as response:
        time.sleep(PING_SECONDS + 2)  # no worker yet: the run waits in the queue, the stream only pings
        stack.start_worker()
        _read(response, received)
    silent = time.monotonic() - started

    assert received.done, received
    assert received.pings >= 2, received  # the queue wait and the 12 s before the first token
    assert silent > 12 + PING_SECONDS
    assert [e["stop_reason"] for e in received.events if e["message_type"] == "stop_reason"] == ["end_turn"]
    run = Run.objects.get(pk=received.events[0]["run_id"])
    assert run.status == RunStatus.COMPLETED
    assert count([run.pk]).steps_pending == 0


def test_a_redis_restart_mid_stream_keeps_the_stream_and_it_ends_with_done(stack, organization):
    stack.start_worker()
    agent = _agent(organization, "scripted/slow-echo")
    received = Received()
    restarted = []

    def restart_once(event: dict) -> None:
        if len(received.events) == 5 and not restarted:
            stack.stream_redis.restart(down_for=2)  # nothing on disk: the run's stream and counter are gone
            restarted.append(time.monotonic())

    with _send(stack, agent, "please echo this while redis restarts " * 12) as response:
        _read(response, received, on_event=restart_once)

    assert restarted and received.done, received
    seq_ids = [e["seq_id"] for e in received.events if "seq_id" in e]
    assert seq_ids == sorted(set(seq_ids)), "seq_ids must keep rising across the restart"
    run = Run.objects.get(pk=received.events[0]["run_id"])
    assert (run.status, run.stop_reason) == (RunStatus.COMPLETED, "end_turn")
    counts = count([run.pk])
    assert (counts.runs_unfinished, counts.steps_pending, counts.duplicate_attempts) == (0, 0, 0)
    # The answer itself is in the database whatever the relay lost during the outage.
    answer = run.messages.get(role="assistant")
    assert "please echo this" in json.dumps(answer.content)


def test_a_finished_run_resumed_from_anywhere_ends_with_done(stack, organization):
    stack.start_worker()
    agent = _agent(organization, "scripted/echo")
    first = Received()
    with _send(stack, agent, "short") as response:
        _read(response, first)
    run_id = first.events[0]["run_id"]
    last_seq = first.events[-1]["seq_id"]

    for after in (0, 2, last_seq, last_seq + 100, 2**63 - 1):
        again = Received()
        url = f"{stack.base}/v1/runs/{run_id}/stream?starting_after={after}"
        with requests.get(url, headers=stack.headers, stream=True, timeout=(5, 30)) as response:
            _read(response, again)
        assert again.done and again.pings == 0, (after, again)
        assert [e["seq_id"] for e in again.events] == [e["seq_id"] for e in first.events if e["seq_id"] > after]

    too_big = requests.get(f"{stack.base}/v1/runs/{run_id}/stream?starting_after={2**64}", headers=stack.headers)
    assert too_big.status_code == 400 and too_big.headers["Content-Type"].startswith("application/json")
    assert "starting_after" in too_big.json()["fields"]
