"""The one write path for steps: start, progress, finish, fail, cancel, messages, feedback."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from agents.models import StopReason
from config.errors import ApplicationError
from steps import services
from steps.models import (
    ErrorRollupHour,
    Message,
    ProviderTrace,
    Step,
    StepMetrics,
    StepProgression,
    StepRollupHour,
    StepStatus,
)
from steps.provider_traces import ProviderTraceIn
from steps.services import StepMetricsIn
from steps.values import ContentValidationError, Usage
from tests.factories import AgentFactory, RunFactory

pytestmark = pytest.mark.django_db


def _start(agent, **kwargs):
    return services.step_start(
        organization=agent.organization,
        agent=agent,
        provider_name="anthropic",
        model="claude-sonnet-4-5",
        model_handle="anthropic/claude-sonnet-4-5",
        **kwargs,
    )


ANTHROPIC_USAGE = Usage(
    prompt_tokens=1000,
    completion_tokens=100,
    cached_input_tokens=200,
    cache_write_tokens=100,
    reasoning_tokens=None,
    prompt_tokens_details={"input_tokens": 700, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 100},
)


def test_step_start_creates_a_pending_step_at_progression_start():
    agent = AgentFactory()
    run = RunFactory(agent=agent, request_id="req-abc", user_id="u-1")

    step = _start(agent, run=run, tags=["b", "a", "a"])

    step.refresh_from_db()
    assert step.id.startswith("step-")
    assert step.status == StepStatus.PENDING
    assert step.progression == StepProgression.START
    assert step.request_id == "req-abc"  # inherited from the run
    assert step.user_id == "u-1"
    assert step.tags == ["a", "b"]
    assert step.organization_id == agent.organization_id


def test_step_start_with_a_known_id_returns_the_existing_step():
    agent = AgentFactory()
    first = _start(agent, step_id="step-fixed")
    again = _start(agent, step_id="step-fixed")
    assert again.pk == first.pk
    assert Step.objects.count() == 1


def test_step_progress_only_moves_forward():
    step = _start(AgentFactory())
    services.step_progress(step=step, progression=StepProgression.RESPONSE_RECEIVED)
    services.step_progress(step=step, progression=StepProgression.STREAM_RECEIVED)
    step.refresh_from_db()
    assert step.progression == StepProgression.RESPONSE_RECEIVED


def test_step_finish_records_usage_cost_metrics_messages_and_trace():
    agent = AgentFactory()
    run = RunFactory(agent=agent)
    step = _start(agent, run=run)

    services.step_finish(
        step=step,
        usage=ANTHROPIC_USAGE,
        finish_reason="stop",
        stop_reason=StopReason.END_TURN,
        response_id="msg_1",
        metrics=StepMetricsIn(ttft_ns=120_000_000, llm_request_ns=800_000_000, step_ns=900_000_000),
        messages=[
            {"role": "assistant", "content": [{"type": "reasoning", "reasoning": "think", "signature": "sig"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
        ],
        provider_trace=ProviderTraceIn(
            provider="anthropic",
            model="claude-sonnet-4-5",
            request_json={"model": "claude-sonnet-4-5", "headers": {"x-api-key": "sk-ant-secret"}},
            response_json={"id": "msg_1"},
            latency_ms=800,
        ),
    )

    step.refresh_from_db()
    assert step.status == StepStatus.SUCCESS
    assert step.progression == StepProgression.FINISHED
    assert (step.prompt_tokens, step.completion_tokens, step.total_tokens) == (1000, 100, 1100)
    assert (step.cached_input_tokens, step.cache_write_tokens, step.reasoning_tokens) == (200, 100, None)
    assert step.prompt_tokens_details["cache_read_input_tokens"] == 200
    # 700 uncached * $3/M + 200 cache reads * $0.30/M + 100 cache writes * $3.75/M + 100 output * $15/M
    assert step.cost_usd == Decimal("0.0040350000")
    assert step.cost_detail == ""
    assert step.completed_at is not None
    assert StepMetrics.objects.get(step=step).ttft_ns == 120_000_000
    messages = list(Message.objects.filter(step=step).order_by("sequence_id"))
    assert [m.content[0]["type"] for m in messages] == ["reasoning", "text"]
    assert [m.sequence_id for m in messages] == [1, 2]
    assert all(m.run_id == run.pk for m in messages)
    trace = ProviderTrace.objects.get(step=step)
    assert "sk-ant-secret" not in str(trace.request_json)
    run.refresh_from_db()
    assert run.step_count == 1


def test_step_finish_is_idempotent():
    agent = AgentFactory()
    run = RunFactory(agent=agent)
    step = _start(agent, run=run)
    kwargs = {
        "usage": ANTHROPIC_USAGE,
        "finish_reason": "stop",
        "messages": [{"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}],
        "provider_trace": ProviderTraceIn(provider="anthropic", request_json={}, response_json={}),
    }
    services.step_finish(step=step, **kwargs)
    services.step_finish(step=step, **kwargs)

    assert Message.objects.filter(step=step).count() == 1
    assert ProviderTrace.objects.filter(step=step).count() == 1
    run.refresh_from_db()
    assert run.step_count == 1


def test_usage_none_means_not_reported_and_zero_means_reported_zero():
    step = _start(AgentFactory())
    services.step_finish(
        step=step, usage=Usage(prompt_tokens=10, completion_tokens=0, cached_input_tokens=0, reasoning_tokens=None)
    )
    step.refresh_from_db()
    assert step.completion_tokens == 0
    assert step.cached_input_tokens == 0
    assert step.reasoning_tokens is None
    assert step.cache_write_tokens is None
    assert step.total_tokens == 10


def test_unknown_model_has_no_cost_and_says_why():
    agent = AgentFactory()
    step = services.step_start(organization=agent.organization, agent=agent, provider_name="openai", model="my-llama")
    services.step_finish(step=step, usage=Usage(prompt_tokens=100, completion_tokens=10))
    step.refresh_from_db()
    assert step.cost_usd is None
    assert "unknown model 'my-llama'" in step.cost_detail


def test_invalid_content_part_is_rejected_naming_the_field_and_nothing_is_written():
    step = _start(AgentFactory())
    bad = [
        {"role": "assistant", "content": [{"type": "text", "text": "fine"}]},
        {"role": "tool", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                   "data": "not base64!"}}]},
    ]  # fmt: skip
    with pytest.raises(ContentValidationError) as info:
        services.step_finish(step=step, usage=Usage(prompt_tokens=1, completion_tokens=1), messages=bad)

    assert info.value.extra["errors"][0]["field"] == "content.0.source.data"
    assert info.value.extra["message_index"] == 1
    step.refresh_from_db()
    assert step.status == StepStatus.PENDING
    assert step.prompt_tokens is None
    assert not Message.objects.exists()


def test_failed_step_keeps_the_progression_it_reached():
    step = _start(AgentFactory())
    services.step_progress(step=step, progression=StepProgression.STREAM_RECEIVED)
    try:
        raise TimeoutError("read timed out")
    except TimeoutError as exc:
        services.step_fail(
            step=step,
            error_type="timeout",
            message="Provider timed out after 60s",
            exc=exc,
            details={"retryable": True},
            stop_reason=StopReason.LLM_API_ERROR,
            provider_trace=ProviderTraceIn(provider="anthropic", error_type="timeout", error_message="timed out"),
        )

    step.refresh_from_db()
    assert step.status == StepStatus.FAILED
    assert step.progression == StepProgression.STREAM_RECEIVED
    assert step.error_type == "timeout"
    assert step.error_data["message"] == "Provider timed out after 60s"
    assert "TimeoutError: read timed out" in step.error_data["traceback"]
    assert step.error_data["details"] == {"retryable": True}
    assert step.stop_reason == StopReason.LLM_API_ERROR
    assert ProviderTrace.objects.get(step=step).error_type == "timeout"


def test_fail_after_finish_changes_nothing_and_finish_after_fail_is_a_conflict():
    finished = _start(AgentFactory())
    services.step_finish(step=finished, usage=Usage(prompt_tokens=1, completion_tokens=1))
    services.step_fail(step=finished, error_type="timeout", message="late")
    finished.refresh_from_db()
    assert finished.status == StepStatus.SUCCESS
    assert finished.error_type is None

    failed = _start(AgentFactory())
    services.step_fail(step=failed, error_type="rate_limit", message="429")
    with pytest.raises(ApplicationError) as info:
        services.step_finish(step=failed, usage=Usage(prompt_tokens=1, completion_tokens=1))
    assert info.value.status_code == 409


def test_cancelled_step_records_cancelled_status_and_stop_reason():
    step = _start(AgentFactory())
    services.step_cancel(step=step)
    step.refresh_from_db()
    assert step.status == StepStatus.CANCELLED
    assert step.stop_reason == StopReason.CANCELLED
    assert step.error_type == "cancelled"


def test_messages_get_increasing_sequence_ids_within_a_run():
    agent = AgentFactory()
    run = RunFactory(agent=agent)
    services.messages_create(
        organization=agent.organization,
        run=run,
        messages=[{"role": "user", "content": [{"type": "text", "text": "q"}]}],
    )
    step = _start(agent, run=run)
    services.step_finish(
        step=step,
        usage=Usage(prompt_tokens=1, completion_tokens=1),
        messages=[
            {
                "role": "assistant",
                "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
            },
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "tool_returns": [
                    {
                        "tool_call_id": "call_1",
                        "status": "success",
                        "func_response": [
                            {"type": "text", "text": "chart"},
                            {"type": "image", "source": {"type": "url", "url": "https://example.com/c.png"}},
                        ],
                    }
                ],
            },
        ],
    )
    assert list(Message.objects.filter(run=run).values_list("role", "sequence_id")) == [
        ("user", 1),
        ("assistant", 2),
        ("tool", 3),
    ]


def test_feedback_and_tags_are_added_and_removed_never_replaced():
    agent = AgentFactory()
    step = _start(agent, tags=["prod"])
    services.step_set_feedback(
        organization=agent.organization, step_id=step.pk, feedback="negative", set_feedback=True, add_tags=["bug"]
    )
    services.step_set_feedback(organization=agent.organization, step_id=step.pk, remove_tags=["prod"])
    step.refresh_from_db()
    assert step.feedback == "negative"
    assert step.tags == ["bug"]


def test_feedback_on_another_organizations_step_is_not_found():
    step = _start(AgentFactory())
    other = AgentFactory().organization
    with pytest.raises(ApplicationError) as info:
        services.step_set_feedback(organization=other, step_id=step.pk, feedback="positive", set_feedback=True)
    assert info.value.status_code == 404


# --- bulk recording: steps_record_many ----------------------------------------------------------------------------


def _record(run, span: int, **kwargs) -> services.StepRecord:
    created = datetime(2026, 4, 2, 10, span, tzinfo=UTC)
    values = {
        "trace_id": "a" * 32, "span_id": f"{span:016x}", "usage": Usage(prompt_tokens=100, completion_tokens=10),
        "created_at": created, "completed_at": created + timedelta(seconds=1), "run": run, "provider_name": "openai",
        "model": "gpt-4o-mini", "model_handle": "openai/gpt-4o-mini",
        "metrics": StepMetricsIn(llm_request_ns=400_000_000, ttft_ns=90_000_000),
        "messages": [{"role": "assistant", "content": [{"type": "text", "text": f"answer {span}"}]}],
        "provider_trace": ProviderTraceIn(provider="openai", request_json={"api_key": "sk-secret"}),
    }  # fmt: skip
    return services.StepRecord(**{**values, **kwargs})


def test_steps_record_many_stores_steps_with_their_rows_counts_and_rollups_once():
    run = RunFactory(user_id="u-1")
    services.messages_create(
        organization=run.organization, run=run, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    )
    records = [
        _record(run, 2),
        _record(run, 1, error_type="timeout", error_message="timed out", usage=Usage(), messages=[]),
    ]

    inserted = services.steps_record_many(organization=run.organization, records=records)

    assert len(inserted) == 2
    ok, failed = Step.objects.get(span_id=f"{2:016x}"), Step.objects.get(span_id=f"{1:016x}")
    assert (ok.status, ok.user_id, ok.agent_id, ok.latency_ns, ok.total_tokens) == (
        StepStatus.SUCCESS, "u-1", run.agent_id, 400_000_000, 110,
    )  # fmt: skip
    assert ok.cost_usd > 0
    assert (failed.status, failed.error_type, failed.progression) == ("failed", "timeout", StepProgression.START)
    assert failed.error_data["message"] == "timed out"
    assert StepMetrics.objects.filter(step__in=[ok, failed]).count() == 2
    assert "sk-secret" not in str(ProviderTrace.objects.get(step=ok).request_json)
    # Sequence ids continue after the run's input message.
    assert list(Message.objects.filter(run=run).values_list("step_id", "sequence_id")) == [(None, 1), (ok.pk, 2)]
    run.refresh_from_db()
    assert run.step_count == 2
    hour = StepRollupHour.objects.get(organization=run.organization)
    assert (hour.steps, hour.error_steps, hour.total_tokens) == (2, 1, 110)
    assert ErrorRollupHour.objects.get(organization=run.organization).count == 1

    # Sent again (a retried batch): nothing more is stored or counted.
    assert services.steps_record_many(organization=run.organization, records=records) == []
    run.refresh_from_db()
    assert run.step_count == 2
    assert Message.objects.filter(run=run).count() == 2
    assert StepRollupHour.objects.get(organization=run.organization).steps == 2


def test_steps_record_many_rejects_the_whole_call_on_an_invalid_message():
    run = RunFactory()
    bad = _record(run, 3, messages=[{"role": "assistant", "content": [{"type": "image", "source": {"type": "url"}}]}])

    with pytest.raises(ContentValidationError):
        services.steps_record_many(organization=run.organization, records=[_record(run, 4), bad])

    assert not Step.objects.exists() and not Message.objects.exists() and not ProviderTrace.objects.exists()
    assert not StepRollupHour.objects.exists()
