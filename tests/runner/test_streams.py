"""Run streams that always end and never die of silence; the run sweep that leaves no run or step unfinished."""

import json
import os
import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import Run, RunStatus, StopReason
from agents.services import run_claim
from runner.providers import Turn
from runner.services import run_start, runs_recover_stale
from runner.streams import MAX_SEQ_ID, MemoryRunStream, set_run_stream
from steps.models import Step, StepStatus
from steps.services import step_start, steps_fail_stale

USER = {"messages": [{"role": "user", "content": "hello"}]}


def _events(response) -> list:
    body = b"".join(response.streaming_content).decode()
    events = []
    for frame in (f for f in body.split("\n\n") if f and not f.startswith(":")):
        lines = frame.split("\n")
        kind = lines[0][len("event: ") :] if lines[0].startswith("event: ") else "message"
        data = next(line[len("data: ") :] for line in lines if line.startswith("data: "))
        events.append((kind, data if data == "[DONE]" else json.loads(data)))
    return events


@pytest.fixture
def fresh_stream():
    """A new in-memory stream backend: what a web process restarted since the run has (no events at all)."""
    stream = MemoryRunStream()
    set_run_stream(stream)
    yield stream
    set_run_stream(None)


def _run(agent, **values) -> Run:
    run = run_start(
        organization=agent.organization, agent=agent, request_id="req-s",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    )  # fmt: skip
    if values:
        Run.objects.filter(pk=run.pk).update(**values)
        run.refresh_from_db()
    return run


@pytest.mark.django_db
@pytest.mark.parametrize("value", [str(2**64 + 1), str(MAX_SEQ_ID + 1), "-1", "1.5", "abc", "²", ""])
def test_starting_after_out_of_range_or_not_an_integer_is_a_400_naming_it(api_client, make_agent, value):
    run = _run(make_agent("scripted/echo"))
    response = api_client.get(f"/v1/runs/{run.pk}/stream", {"starting_after": value})
    assert response.status_code == 400, response.content
    assert "starting_after" in response.json()["fields"]


@pytest.mark.django_db
def test_a_finished_run_resumed_with_no_events_left_ends_with_its_stop_reason_and_done(
    api_client, make_agent, fresh_stream
):
    run = _run(make_agent("scripted/echo"), status=RunStatus.COMPLETED, stop_reason=StopReason.END_TURN)
    events = _events(api_client.get(f"/v1/runs/{run.pk}/stream"))
    assert [e["message_type"] for _, e in events[:-1]] == ["stop_reason", "usage_statistics"]
    assert events[0][1]["stop_reason"] == "end_turn"
    assert events[-1] == ("message", "[DONE]")


@pytest.mark.django_db(transaction=True)
def test_resuming_a_finished_run_past_its_end_sends_only_done(api_client, make_agent, scenario, fresh_stream):
    agent = make_agent(scenario("openai_chat", [Turn(text="short answer")]))
    events = _events(api_client.post(f"/v1/agents/{agent.pk}/messages/stream", USER, format="json"))
    last_seq = events[-2][1]["seq_id"]
    run_id = events[0][1]["run_id"]
    for after in (last_seq, last_seq + 1000, MAX_SEQ_ID):
        assert _events(api_client.get(f"/v1/runs/{run_id}/stream?starting_after={after}")) == [("message", "[DONE]")]


@pytest.mark.django_db(transaction=True)
def test_a_stream_whose_run_fails_without_a_done_event_ends_with_the_error(
    api_client, make_agent, fresh_stream, settings
):
    """The worker died without publishing its end: the relay notices the final row at an idle tick."""
    settings.STEPLENS_SSE_PING_SECONDS = 0.05
    run = _run(make_agent("scripted/echo"), status=RunStatus.RUNNING)
    fresh_stream.publish(run.pk, {"message_type": "assistant_message", "run_id": run.pk, "content": "partial"})
    response = api_client.get(f"/v1/runs/{run.pk}/stream")
    chunks = iter(response.streaming_content)
    first = next(chunks).decode()
    assert "partial" in first
    assert next(chunks) == b": ping\n\n"  # alive while the run is running

    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.FAILED,
        stop_reason=StopReason.ERROR,
        error_data={"error_type": "worker_lost", "message": "The worker stopped."},
    )
    rest = b"".join(chunks).decode()
    assert "event: error" in rest and "worker_lost" in rest
    assert '"stop_reason": "error"' in rest
    assert rest.endswith("data: [DONE]\n\n")


@pytest.mark.django_db(transaction=True)
def test_a_queued_run_keeps_its_stream_alive_with_pings(api_client, make_agent, settings, fresh_stream):
    settings.STEPLENS_SSE_PING_SECONDS = 0.05
    run = _run(make_agent("scripted/echo"))  # created, no worker took it yet
    chunks = iter(api_client.get(f"/v1/runs/{run.pk}/stream").streaming_content)
    assert [next(chunks) for _ in range(3)] == [b": ping\n\n"] * 3


@pytest.mark.django_db(transaction=True)  # the POST's run starts when its transaction commits
@pytest.mark.parametrize("path", ["/v1/runs/{run}/stream", "/v1/agents/{agent}/messages/stream"])
def test_event_stream_accept_header_is_served(api_client, make_agent, path, fresh_stream):
    agent = make_agent("scripted/echo")
    run = _run(agent, status=RunStatus.COMPLETED, stop_reason=StopReason.END_TURN)
    url = path.format(run=run.pk, agent=agent.pk)
    method = api_client.get if "runs" in url else api_client.post
    response = method(url, USER, format="json", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert _events(response)[-1] == ("message", "[DONE]")


@pytest.mark.django_db
def test_errors_before_an_event_stream_starts_are_json(api_client):
    response = api_client.get("/v1/runs/run-missing/stream", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"] == "not_found"


@pytest.mark.django_db(transaction=True)
def test_a_failing_stream_backend_neither_fails_nor_slows_the_run(api_client, make_agent, scenario):
    attempts = []

    class Broken(MemoryRunStream):
        def publish(self, run_id, event):
            attempts.append(event)
            raise ConnectionError("Redis is down")

    set_run_stream(Broken())
    try:
        agent = make_agent(scenario("openai_chat", [Turn(text="still answered " * 20, chunk_chars=5)]))
        body = api_client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json").json()
    finally:
        set_run_stream(None)
    assert (body["status"], body["stop_reason"]) == ("completed", "end_turn")
    assert "still answered" in json.dumps(body["messages"])
    # About 60 chunks: after the first failure the publisher stops trying for a while, then tries `done` once.
    assert 2 <= len(attempts) < 10
    assert attempts[-1]["type"] == "done"


# --- the sweep ------------------------------------------------------------------------------------------------------


def _stale(run: Run, *, lease: str | None = "dead-worker") -> None:
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.RUNNING, lease=lease, heartbeat_at=timezone.now() - timedelta(hours=1)
    )


@pytest.mark.django_db(transaction=True)
def test_sweep_resumes_a_running_run_whose_heartbeat_is_stale(make_agent, scenario):
    run = _run(make_agent(scenario("openai_chat", [Turn(text="resumed answer")])))
    assert run_claim(run=run, lease="dead-worker") is not None
    lost = step_start(organization=run.organization, run=run, step_number=1)
    _stale(run)

    outcome = runs_recover_stale()  # eager mode: the re-dispatched run executes here

    assert (outcome.resumed, outcome.failed) == (1, 0)
    run.refresh_from_db()
    assert (run.status, run.stop_reason, run.attempt, run.lease) == (RunStatus.COMPLETED, "end_turn", 2, None)
    lost.refresh_from_db()
    assert (lost.status, lost.error_type) == (StepStatus.FAILED, "worker_lost")
    assert list(Step.objects.filter(run=run).order_by("attempt").values_list("step_number", "attempt")) == [
        (1, 1),
        (1, 2),
    ]


@pytest.mark.django_db(transaction=True)
def test_sweep_fails_a_run_out_of_attempts_with_worker_lost(make_agent, settings):
    run = _run(make_agent("scripted/echo"))
    step = step_start(organization=run.organization, run=run, step_number=1)
    _stale(run)
    Run.objects.filter(pk=run.pk).update(attempt=settings.STEPLENS_RUN_MAX_ATTEMPTS)

    outcome = runs_recover_stale()

    assert (outcome.resumed, outcome.failed) == (0, 1)
    run.refresh_from_db()
    assert (run.status, run.stop_reason, run.error["type"]) == (RunStatus.FAILED, StopReason.ERROR, "worker_lost")
    step.refresh_from_db()
    assert (step.status, step.error_type) == (StepStatus.FAILED, "worker_lost")
    assert runs_recover_stale() == type(outcome)()  # nothing left to do


@pytest.mark.django_db(transaction=True)
def test_sweep_leaves_live_runs_alone_and_resends_a_queued_run_whose_task_was_lost(make_agent, scenario, settings):
    agent = make_agent(scenario("openai_chat", [Turn(text="a")], repeat_last=True))
    live = _run(agent)
    run_claim(run=live, lease="live-worker")
    lost_task = _run(agent)
    Run.objects.filter(pk=lost_task.pk).update(created_at=timezone.now() - timedelta(hours=1))

    outcome = runs_recover_stale()

    assert (outcome.resumed, outcome.failed, outcome.requeued) == (0, 0, 1)
    live.refresh_from_db()
    lost_task.refresh_from_db()
    assert (live.status, live.lease) == (RunStatus.RUNNING, "live-worker")
    assert lost_task.status == RunStatus.COMPLETED


@pytest.mark.django_db
def test_step_sweep_fails_pending_steps_of_ended_runs_at_once(make_agent):
    run = _run(make_agent("scripted/echo"), status=RunStatus.FAILED, stop_reason=StopReason.ERROR)
    orphan = step_start(organization=run.organization, run=run, step_number=1)
    live = step_start(organization=run.organization, run=_run(make_agent("scripted/echo-openai")), step_number=1)

    assert steps_fail_stale(older_than=timedelta(hours=1)) == 1

    orphan.refresh_from_db()
    live.refresh_from_db()
    assert (orphan.status, orphan.error_type, live.status) == (StepStatus.FAILED, "worker_lost", StepStatus.PENDING)


@pytest.mark.django_db
def test_a_run_cannot_record_the_same_step_attempt_twice(make_agent):
    from django.db import IntegrityError, transaction

    run = _run(make_agent("scripted/echo"))
    step_start(organization=run.organization, run=run, step_number=1, attempt=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        step_start(organization=run.organization, run=run, step_number=1, attempt=1)


def test_follow_ends_when_the_run_ends_even_if_nothing_is_published(fresh_stream):
    from runner.streams import follow

    ended = threading.Event()
    events = follow("run-x", idle_ms=20, run_ended=ended.is_set)
    assert next(events) is None
    ended.set()
    assert list(events) == []


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_holder_died_on_this_machine_is_taken_over_at_once(make_agent, scenario):
    import subprocess
    import sys

    from agents.services import lease_holder_dead, new_lease
    from runner.loop import run_execute

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    mine = new_lease()
    dead = mine.replace(f":{os.getpid()}:", f":{gone.pid}:")
    assert (lease_holder_dead(dead), lease_holder_dead(mine), lease_holder_dead("elsewhere:1:1:abc")) == (
        True,
        False,
        False,
    )

    run = _run(make_agent(scenario("openai_chat", [Turn(text="taken over")])))
    assert run_claim(run=run, lease=dead) is not None  # a fresh heartbeat: the bound alone would make us wait
    run = run_execute(run_id=run.pk)
    assert (run.status, run.attempt, run.lease) == (RunStatus.COMPLETED, 2, None)


@pytest.mark.django_db(transaction=True)
def test_a_paused_run_streamed_past_its_pause_waits_for_the_approval_and_then_ends(
    api_client, make_agent, scenario, settings, fresh_stream
):
    from runner.providers import ToolCallSpec

    settings.STEPLENS_SSE_PING_SECONDS = 0.05
    call = ToolCallSpec(name="issue_refund", arguments={"order_id": "P", "amount": 2}, id="call_p")
    agent = make_agent(
        scenario("openai_chat", [Turn(tool_calls=[call]), Turn(text="Refunded.")]), tools=["issue_refund"]
    )
    paused = api_client.post(f"/v1/agents/{agent.pk}/messages", USER, format="json").json()
    assert paused["stop_reason"] == "requires_approval"
    last_seq = fresh_stream.last(paused["run_id"])["seq_id"]

    chunks = iter(api_client.get(f"/v1/runs/{paused['run_id']}/stream?starting_after={last_seq}").streaming_content)
    assert next(chunks) == b": ping\n\n"  # paused is not finished: the stream waits
    approved = api_client.post(
        f"/v1/runs/{paused['run_id']}/approvals", {"tool_call_id": "call_p", "approve": True}, format="json"
    )
    assert approved.json()["status"] == "completed"
    rest = b"".join(chunks).decode()
    assert "Refunded." in rest and '"stop_reason": "end_turn"' in rest
    assert rest.endswith("data: [DONE]\n\n")


@pytest.mark.django_db
def test_a_queued_run_is_resent_again_only_when_its_age_doubles(make_agent, monkeypatch, settings):
    sent = []
    monkeypatch.setattr("runner.services.run_enqueue", lambda *, run: sent.append(run.pk))
    run = _run(make_agent("scripted/echo"))
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=10))

    assert runs_recover_stale().requeued == 1
    assert runs_recover_stale().requeued == 0  # just re-sent
    run.refresh_from_db()
    next_send = run.heartbeat_at + timedelta(seconds=settings.STEPLENS_STALE_RUN_SECONDS)
    # Re-sent when it was 10 minutes old (plus the moments the test took): the next send is at twice that age.
    assert timedelta(minutes=20) <= next_send - run.created_at <= timedelta(minutes=21)
    assert sent == [run.pk]


@pytest.mark.django_db(transaction=True)
def test_a_waiting_stream_holds_no_database_connection(api_client, make_agent, settings, fresh_stream):
    """workers x threads idle streams must not pin as many PostgreSQL connections: each wait starts without one."""
    from django.db import connection

    settings.STEPLENS_SSE_PING_SECONDS = 0.05
    run = _run(make_agent("scripted/echo"))  # queued: the stream waits
    chunks = iter(api_client.get(f"/v1/runs/{run.pk}/stream").streaming_content)
    assert next(chunks) == b": ping\n\n"
    if connection.vendor != "sqlite":  # Django keeps an in-memory test database open on purpose
        assert connection.connection is None
    Run.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETED, stop_reason=StopReason.END_TURN)
    rest = b"".join(chunks).decode()
    assert '"stop_reason": "end_turn"' in rest and rest.endswith("data: [DONE]\n\n")


@pytest.mark.django_db
def test_a_heartbeat_is_lost_only_when_the_runs_row_shows_another_holder_or_none(make_agent):
    from agents.services import run_heartbeat

    run = _run(make_agent("scripted/echo"))
    assert run_claim(run=run, lease="mine") is not None
    assert run_heartbeat(run_id=run.pk, lease="mine") is True
    Run.objects.filter(pk=run.pk).update(lease="theirs")  # taken over
    assert run_heartbeat(run_id=run.pk, lease="mine") is False
    Run.objects.filter(pk=run.pk).update(lease=None, status=RunStatus.COMPLETED)  # ended
    assert run_heartbeat(run_id=run.pk, lease="mine") is False
    # A row this connection cannot see (created in another, uncommitted transaction) is no takeover.
    assert run_heartbeat(run_id="run-not-visible-here", lease="mine") is True
