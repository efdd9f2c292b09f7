"""The agent loop: every stop reason, retries, tools, approvals, cancellation and crash recovery."""

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.models import Run, RunStatus, StopReason
from config.errors import ApplicationError
from runner.loop import run_cancel, run_execute
from runner.providers import ErrorSpec, ToolCallSpec, Turn, TurnUsage
from runner.services import run_decide_approval, run_start
from steps.models import Message, ProviderTrace, Step, StepMetrics, StepProgression, StepStatus

pytestmark = pytest.mark.django_db


def _run(agent, text="hello"):
    run = run_start(
        organization=agent.organization,
        agent=agent,
        messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
        request_id="req-loop",
    )
    return run_execute(run_id=run.pk)


def _steps(run):
    return list(Step.objects.filter(run=run).order_by("created_at", "attempt"))


def test_tool_call_then_answer_ends_the_turn_and_records_every_step(scenario, make_agent):
    handle = scenario(
        "anthropic",
        [
            Turn(
                reasoning="Need the weather.",
                tool_calls=[ToolCallSpec(name="get_weather", arguments={"city": "Oslo"})],
                usage=TurnUsage(prompt_tokens=300, completion_tokens=40, cache_write_tokens=256),
            ),
            Turn(text="It is cold in Oslo.", usage=TurnUsage(prompt_tokens=350, completion_tokens=12,
                                                             cached_input_tokens=256)),
        ],
    )  # fmt: skip
    agent = make_agent(handle, tools=["get_weather"], tags=["loop-test"])

    run = _run(agent, "Weather in Oslo?")

    assert (run.status, run.stop_reason) == (RunStatus.COMPLETED, StopReason.END_TURN)
    first, second = _steps(run)
    assert (first.status, second.status) == (StepStatus.SUCCESS, StepStatus.SUCCESS)
    assert (first.step_number, second.step_number) == (1, 2)
    assert (first.prompt_tokens, first.cache_write_tokens, first.completion_tokens) == (300, 256, 40)
    assert (second.cached_input_tokens, second.stop_reason) == (256, StopReason.END_TURN)
    assert first.provider_name == "anthropic" and first.model_handle == "anthropic/claude-sonnet-4-6"
    assert first.cost_usd is not None and first.cost_usd > 0
    assert first.request_id == "req-loop" and first.tags == ["loop-test"]
    metrics = StepMetrics.objects.get(step=first)
    assert metrics.ttft_ns > 0 and metrics.llm_request_ns >= metrics.ttft_ns and metrics.tool_execution_ns > 0
    assert ProviderTrace.objects.filter(step__run=run).count() == 2
    roles = list(Message.objects.filter(run=run).values_list("role", flat=True))
    assert roles == ["user", "assistant", "tool", "assistant"]
    tool_message = Message.objects.get(run=run, role="tool")
    assert tool_message.tool_returns[0]["status"] == "success"
    assert "Oslo" in tool_message.tool_returns[0]["func_response"]
    assert run.ttft_ns > 0 and run.total_duration_ns >= run.ttft_ns


def test_parallel_tool_calls_all_run(scenario, make_agent):
    handle = scenario(
        "openai_chat",
        [
            Turn(tool_calls=[ToolCallSpec(name="get_weather", arguments={"city": c}) for c in ("Oslo", "Rome")]),
            Turn(text="Done."),
        ],
    )
    run = _run(make_agent(handle, tools=["get_weather"]))
    returns = [m.tool_returns[0]["func_response"] for m in Message.objects.filter(run=run, role="tool")]
    assert len(returns) == 2 and "Oslo" in returns[0] and "Rome" in returns[1]
    assert run.stop_reason == StopReason.END_TURN


def test_image_tool_return_is_recorded_and_sent_back_to_the_model(scenario, make_agent):
    handle = scenario(
        "anthropic",
        [Turn(tool_calls=[ToolCallSpec(name="render_chart", arguments={"values": [1, 2]})]), Turn(text="ok")],
    )
    run = _run(make_agent(handle, tools=["render_chart"]))
    returned = Message.objects.get(run=run, role="tool").tool_returns[0]["func_response"]
    assert [p["type"] for p in returned] == ["text", "image"]
    request = ProviderTrace.objects.filter(step__run=run).order_by("step__step_number").last().request_json
    assert '"type": "image"' in str(request).replace("'", '"')


def test_send_message_is_terminal(scenario, make_agent):
    handle = scenario(
        "openai_chat", [Turn(tool_calls=[ToolCallSpec(name="send_message", arguments={"message": "Hi!"})])]
    )
    run = _run(make_agent(handle, tools=["send_message"]))
    assert (run.stop_reason, run.step_count) == (StopReason.END_TURN, 1)


def test_agent_with_send_message_that_answers_in_plain_text_stops_with_no_tool_call(scenario, make_agent):
    run = _run(make_agent(scenario("openai_chat", [Turn(text="plain")]), tools=["send_message"]))
    assert run.stop_reason == StopReason.NO_TOOL_CALL


def test_max_steps_stops_a_model_that_keeps_calling_tools(scenario, make_agent):
    handle = scenario("google", [Turn(tool_calls=[ToolCallSpec(name="current_time")])], repeat_last=True)
    run = _run(make_agent(handle, tools=["current_time"], max_steps=3))
    assert (run.stop_reason, run.step_count) == (StopReason.MAX_STEPS, 3)


def test_output_cut_by_max_tokens_stops_with_max_tokens_exceeded(scenario, make_agent):
    run = _run(make_agent(scenario("openai_responses", [Turn(text="cut sho", finish_reason="length")])))
    assert run.stop_reason == StopReason.MAX_TOKENS_EXCEEDED
    assert _steps(run)[0].finish_reason == "length"


def test_unknown_tool_call_stops_with_invalid_tool_call(scenario, make_agent):
    handle = scenario("openai_chat", [Turn(tool_calls=[ToolCallSpec(name="rm_rf", arguments={})])])
    run = _run(make_agent(handle, tools=["get_weather"]))
    assert run.stop_reason == StopReason.INVALID_TOOL_CALL
    assert Message.objects.get(run=run, role="tool").tool_returns[0]["status"] == "error"


def test_retryable_error_is_retried_and_each_attempt_is_a_visible_step(scenario, make_agent):
    handle = scenario(
        "openai_chat", [[Turn(error=ErrorSpec(kind="rate_limit", retry_after=0)), Turn(text="second time lucky")]]
    )
    run = _run(make_agent(handle))
    failed, ok = _steps(run)
    assert (failed.status, failed.error_type, failed.attempt) == (StepStatus.FAILED, "rate_limit", 1)
    assert failed.error_data["details"]["retryable"] is True
    assert ProviderTrace.objects.get(step=failed).error_type == "rate_limit"
    assert (ok.status, ok.attempt, ok.step_number) == (StepStatus.SUCCESS, 2, 1)
    assert run.stop_reason == StopReason.END_TURN


def test_non_retryable_error_fails_the_run_with_llm_api_error(scenario, make_agent):
    run = _run(make_agent(scenario("openai_chat", [Turn(error=ErrorSpec(kind="context_window"))])))
    (step,) = _steps(run)
    assert (run.status, run.stop_reason) == (RunStatus.FAILED, StopReason.LLM_API_ERROR)
    assert (step.error_type, step.stop_reason) == ("context_window_exceeded", StopReason.LLM_API_ERROR)
    assert run.error_data["error_type"] == "context_window_exceeded"


def test_retries_are_bounded(scenario, make_agent, settings):
    settings.STEPLENS_LLM_MAX_ATTEMPTS = 2
    run = _run(make_agent(scenario("anthropic", [Turn(error=ErrorSpec(kind="overloaded"))], repeat_last=True)))
    assert [s.error_type for s in _steps(run)] == ["overloaded", "overloaded"]
    assert run.stop_reason == StopReason.LLM_API_ERROR


def test_approval_pauses_the_run_and_approving_runs_the_tool(scenario, make_agent):
    handle = scenario(
        "openai_chat",
        [
            Turn(
                tool_calls=[ToolCallSpec(name="issue_refund", arguments={"order_id": "A1", "amount": 5}, id="call_r")]
            ),
            Turn(text="Refund issued."),
        ],
    )
    agent = make_agent(handle, tools=["issue_refund"])
    run = _run(agent)
    assert (run.status, run.stop_reason) == (RunStatus.PAUSED, StopReason.REQUIRES_APPROVAL)
    assert Message.objects.filter(run=run, role="approval", name="approval_request").exists()
    assert not Message.objects.filter(run=run, role="tool").exists()

    assert run_decide_approval(run=run, tool_call_id="call_r", approve=True) == set()
    run = run_execute(run_id=run.pk)

    assert (run.status, run.stop_reason) == (RunStatus.COMPLETED, StopReason.END_TURN)
    tool = Message.objects.get(run=run, role="tool")
    assert tool.tool_returns[0]["status"] == "success"
    assert "Refunded 5.00 for order A1" in tool.tool_returns[0]["func_response"]


def test_denying_records_the_reason_and_the_run_continues(scenario, make_agent):
    handle = scenario(
        "anthropic",
        [
            Turn(tool_calls=[ToolCallSpec(name="issue_refund", arguments={"order_id": "B", "amount": 9}, id="call_d")]),
            Turn(text="Understood, no refund."),
        ],
    )
    run = _run(make_agent(handle, tools=["issue_refund"]))
    run_decide_approval(run=run, tool_call_id="call_d", approve=False, reason="over the limit")
    run = run_execute(run_id=run.pk)
    tool = Message.objects.get(run=run, role="tool")
    assert tool.tool_returns[0]["status"] == "error"
    assert "over the limit" in tool.tool_returns[0]["func_response"]
    assert run.stop_reason == StopReason.END_TURN


def test_approval_for_an_unknown_call_is_rejected(scenario, make_agent):
    handle = scenario(
        "openai_chat",
        [Turn(tool_calls=[ToolCallSpec(name="issue_refund", arguments={"order_id": "C", "amount": 1}, id="c1")])],
    )
    run = _run(make_agent(handle, tools=["issue_refund"]))
    with pytest.raises(ApplicationError) as info:
        run_decide_approval(run=run, tool_call_id="nope", approve=True)
    assert (info.value.status_code, info.value.code) == (409, "conflict")  # the run awaits another call


@pytest.mark.django_db(transaction=True)
def test_cancel_stops_an_in_flight_stream_within_a_second(scenario, make_agent):
    handle = scenario("openai_chat", [Turn(text="word " * 200, chunk_chars=5)], chunk_delay=0.05)
    agent = make_agent(handle)
    run = run_start(
        organization=agent.organization, agent=agent, request_id="req-c",
        messages=[{"role": "user", "content": [{"type": "text", "text": "long"}]}],
    )  # fmt: skip
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("run", run_execute(run_id=run.pk)))
    worker.start()
    deadline = time.monotonic() + 10
    while not Step.objects.filter(run=run, progression__gte=StepProgression.STREAM_RECEIVED).exists():
        assert time.monotonic() < deadline, "the stream never started"
        time.sleep(0.02)
    cancelled_at = time.monotonic()
    run_cancel(run=run)
    worker.join(timeout=5)
    assert time.monotonic() - cancelled_at < 1.0
    (step,) = _steps(run)
    assert (step.status, step.stop_reason) == (StepStatus.CANCELLED, StopReason.CANCELLED)
    assert outcome["run"].status == RunStatus.CANCELLED
    assert ProviderTrace.objects.get(step=step).error_type == "cancelled"


def test_cancelling_a_paused_run_ends_it(scenario, make_agent):
    handle = scenario(
        "openai_chat",
        [Turn(tool_calls=[ToolCallSpec(name="issue_refund", arguments={"order_id": "D", "amount": 1}, id="c2")])],
    )
    run = _run(make_agent(handle, tools=["issue_refund"]))
    run = run_cancel(run=run)
    assert (run.status, run.stop_reason) == (RunStatus.CANCELLED, StopReason.CANCELLED)


def test_a_redelivered_run_fails_the_interrupted_step_and_resumes(scenario, make_agent):
    handle = scenario(
        "openai_chat",
        [Turn(tool_calls=[ToolCallSpec(name="current_time")]), Turn(text="It is now.")],
    )
    agent = make_agent(handle, tools=["current_time"])
    run = run_start(
        organization=agent.organization, agent=agent, request_id="req-r",
        messages=[{"role": "user", "content": [{"type": "text", "text": "time?"}]}],
    )  # fmt: skip
    # A worker died mid-step: it holds the run's lease, its heartbeat went stale, a step is pending at STREAM_RECEIVED.
    from agents.services import run_claim
    from steps.services import step_progress, step_start

    run_claim(run=run, lease="dead-worker")
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    lost = step_start(organization=agent.organization, agent=agent, run=run, step_number=1)
    step_progress(step=lost, progression=StepProgression.STREAM_RECEIVED)

    run = run_execute(run_id=run.pk)

    lost.refresh_from_db()
    assert (lost.status, lost.error_type, lost.progression) == (
        StepStatus.FAILED, "worker_lost", StepProgression.STREAM_RECEIVED,
    )  # fmt: skip
    assert (run.stop_reason, run.attempt, run.lease) == (StopReason.END_TURN, 2, None)
    assert not Step.objects.filter(run=run, status=StepStatus.PENDING).exists()
    assert Step.objects.filter(run=run, status=StepStatus.SUCCESS).count() == 2
    # The resumed step is the next attempt of step 1, not a second (1, 1).
    numbers = list(Step.objects.filter(run=run).order_by("created_at").values_list("step_number", "attempt", "status"))
    assert numbers == [(1, 1, StepStatus.FAILED), (1, 2, StepStatus.SUCCESS), (2, 1, StepStatus.SUCCESS)]


def test_a_run_held_by_a_live_worker_is_not_executed_twice(scenario, make_agent):
    from agents.services import RunLeased, run_claim

    agent = make_agent(scenario("openai_chat", [Turn(text="once")]))
    run = run_start(
        organization=agent.organization, agent=agent, request_id="req-l",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    )  # fmt: skip
    assert run_claim(run=run, lease="live-worker") is not None
    assert run_claim(run=run, lease="second-worker") is None  # the heartbeat is fresh

    with pytest.raises(RunLeased) as raised:
        run_execute(run_id=run.pk)

    assert raised.value.retry_in > 1
    assert not Step.objects.filter(run=run).exists()
    run.refresh_from_db()
    assert (run.status, run.lease, run.attempt) == (RunStatus.RUNNING, "live-worker", 1)


def test_an_unexpected_error_ends_the_run_with_error_and_no_pending_step(scenario, make_agent, monkeypatch):
    agent = make_agent(scenario("openai_chat", [Turn(text="hi")]))

    def broken(*args, **kwargs):
        raise RuntimeError("bug in step_finish")

    monkeypatch.setattr("runner.loop.step.step_finish", broken)
    run = _run(agent)
    assert (run.status, run.stop_reason) == (RunStatus.FAILED, StopReason.ERROR)
    (step,) = _steps(run)
    assert (step.status, step.error_type) == (StepStatus.FAILED, "internal_error")
    assert "bug in step_finish" in step.error_data["traceback"]


def test_a_finished_run_is_not_executed_again(scenario, make_agent):
    run = _run(make_agent(scenario("openai_chat", [Turn(text="once")])))
    again = run_execute(run_id=run.pk)
    assert again.status == RunStatus.COMPLETED
    assert Step.objects.filter(run=run).count() == 1


def _provider_calls_by_error_type(provider: str) -> dict[str, float]:
    from config.metrics import REGISTRY

    counts: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "steplens_provider_call_duration_seconds_count" and (
                sample.labels["gen_ai_provider_name"] == provider
            ):
                counts[sample.labels["error_type"]] = counts.get(sample.labels["error_type"], 0.0) + sample.value
    return counts


def test_each_provider_attempt_is_measured_by_error_type_and_runs_with_its_step_in_the_log_context(
    scenario, make_agent, monkeypatch
):
    """steplens_provider_call_duration_seconds counts every attempt; log lines of an attempt name its step."""
    from config.logging_setup import current_log_context
    from runner.loop import step as step_module

    handle = scenario(
        "openai_chat", [[Turn(error=ErrorSpec(kind="rate_limit", retry_after=0)), Turn(text="second time lucky")]]
    )
    agent = make_agent(handle)
    contexts: list[dict] = []
    stream_answer = step_module._stream_answer

    def recording(inputs, *, step, **kwargs):
        contexts.append({"step": step.pk, **current_log_context()})
        return stream_answer(inputs, step=step, **kwargs)

    monkeypatch.setattr(step_module, "_stream_answer", recording)
    before = _provider_calls_by_error_type("openai")
    run = _run(agent)
    after = _provider_calls_by_error_type("openai")
    failed, ok = _steps(run)
    assert after.get("rate_limit", 0) - before.get("rate_limit", 0) == 1
    assert after.get("", 0) - before.get("", 0) == 1
    assert [(c["step"], c.get("step_id"), c.get("run_id")) for c in contexts] == [
        (failed.pk, failed.pk, run.pk),
        (ok.pk, ok.pk, run.pk),
    ]
