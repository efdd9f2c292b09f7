"""The one write path for steps: start, progress, finish, fail, cancel; messages; feedback and tags.

The agent loop and the OTLP ingest both record through these functions. Each is atomic; finishing
or failing a step twice (a retried task, a re-sent span) changes nothing the second time.
"""

import traceback as traceback_module
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Max
from django.utils import timezone

from accounts.models import Organization, Project
from agents.models import Agent, Run, StopReason
from config.errors import ApplicationError, NotFound
from steps.content import MessageIn, validate_message
from steps.costs import step_cost
from steps.models import Feedback, Message, Step, StepMetrics, StepOrigin, StepProgression, StepStatus
from steps.usage import Usage
from traces.services import ProviderTraceIn, provider_trace_record

_FINAL = {StepStatus.SUCCESS, StepStatus.FAILED, StepStatus.CANCELLED}


@dataclass(slots=True)
class StepMetricsIn:
    """Timings of a step in nanoseconds (epoch ns for the *_start_ns fields)."""

    step_start_ns: int | None = None
    llm_request_start_ns: int | None = None
    llm_request_ns: int | None = None
    ttft_ns: int | None = None
    tool_execution_ns: int | None = None
    step_ns: int | None = None


class StepConflict(ApplicationError):
    """The step already ended in another way than the caller asks for."""

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message, extra=extra, status_code=409)


def _validate_all(messages: Iterable[MessageIn | dict[str, Any]]) -> list[MessageIn]:
    validated = []
    for index, message in enumerate(messages):
        try:
            validated.append(validate_message(message))
        except ApplicationError as exc:
            exc.extra["message_index"] = index
            raise
    return validated


@transaction.atomic
def step_start(
    *,
    organization: Organization,
    step_id: str | None = None,
    agent: Agent | None = None,
    run: Run | None = None,
    project: Project | None = None,
    origin: str = StepOrigin.AGENT_LOOP,
    step_number: int | None = None,
    attempt: int = 1,
    provider_name: str | None = None,
    provider_id: str | None = None,
    provider_category: str | None = None,
    model: str | None = None,
    model_handle: str | None = None,
    model_endpoint: str | None = None,
    context_window_limit: int | None = None,
    request_id: str | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
    tid: str | None = None,
    user_id: str | None = None,
    conversation_id: str | None = None,
    tags: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> Step:
    """Create a pending step at progression START. With a known `step_id` the existing step is returned."""
    if step_id is not None:
        existing = Step.objects.filter(pk=step_id).first()
        if existing is not None:
            if existing.organization_id != organization.pk:
                raise StepConflict("Step id is already taken.", extra={"step_id": step_id})
            return existing
    if run is not None and agent is None:
        agent = run.agent
    step = Step(
        organization=organization,
        agent=agent,
        run=run,
        project=project or (run.project if run else None) or (agent.project if agent else None),
        origin=origin,
        step_number=step_number,
        attempt=attempt,
        provider_name=provider_name,
        provider_id=provider_id,
        provider_category=provider_category,
        model=model,
        model_handle=model_handle,
        model_endpoint=model_endpoint,
        context_window_limit=context_window_limit,
        request_id=request_id if request_id is not None else (run.request_id if run else None),
        trace_id=trace_id,
        span_id=span_id,
        tid=tid,
        user_id=user_id if user_id is not None else (run.user_id if run else None),
        conversation_id=conversation_id if conversation_id is not None else (run.conversation_id if run else None),
        tags=sorted(set(tags)),
        metadata=metadata or {},
        created_at=created_at or timezone.now(),
        status=StepStatus.PENDING,
        progression=StepProgression.START,
    )
    if step_id is not None:
        step.id = step_id
    step.save(force_insert=True)
    return step


def step_progress(*, step: Step, progression: StepProgression) -> Step:
    """Record that a pending step reached `progression`; progression never moves backwards."""
    Step.objects.filter(pk=step.pk, status=StepStatus.PENDING, progression__lt=progression).update(
        progression=progression
    )
    step.progression = max(step.progression, progression)
    return step


def _lock(step: Step) -> Step:
    return Step.objects.select_for_update().get(pk=step.pk)


def _apply_usage(step: Step, usage: Usage) -> None:
    for name, value in usage.as_counts().items():
        setattr(step, name, value)
    step.prompt_tokens_details = usage.prompt_tokens_details
    step.completion_tokens_details = usage.completion_tokens_details
    cost = step_cost(provider=step.provider_name, model=step.model, usage=usage, when=step.created_at)
    step.cost_usd, step.cost_detail = cost.usd, cost.detail


def _save_metrics(step: Step, metrics: StepMetricsIn | None) -> None:
    if metrics is None:
        return
    values = {f.name: getattr(metrics, f.name) for f in fields(metrics)}
    StepMetrics.objects.update_or_create(step=step, defaults=values)


def _record_outcome(
    step: Step, *, metrics: StepMetricsIn | None, provider_trace: ProviderTraceIn | None, messages: list[MessageIn]
) -> None:
    """What finishing and failing share: metrics, provider trace, messages and the run's step count."""
    _save_metrics(step, metrics)
    if provider_trace is not None:
        provider_trace_record(step=step, trace=provider_trace, attempt=step.attempt)
    if messages:
        _messages_insert(
            organization_id=step.organization_id, messages=messages, run=step.run, step=step, agent=step.agent
        )
    if step.run_id is not None:
        Run.objects.filter(pk=step.run_id).update(step_count=F("step_count") + 1)


@transaction.atomic
def step_finish(
    *,
    step: Step,
    usage: Usage,
    finish_reason: str | None = None,
    stop_reason: str | None = None,
    response_id: str | None = None,
    metrics: StepMetricsIn | None = None,
    messages: Sequence[MessageIn | dict[str, Any]] = (),
    provider_trace: ProviderTraceIn | None = None,
    model: str | None = None,
    completed_at: datetime | None = None,
) -> Step:
    """End a step successfully with its usage, cost, metrics, messages and provider trace.

    Idempotent: finishing an already successful step returns it unchanged. Finishing a failed or
    cancelled step is a conflict. Invalid messages reject the whole call and nothing is written.
    """
    validated = _validate_all(messages)
    step = _lock(step)
    if step.status == StepStatus.SUCCESS:
        return step
    if step.status in _FINAL:
        raise StepConflict(f"Step already ended as {step.status}.", extra={"step_id": step.pk})

    if model:
        step.model = model
    _apply_usage(step, usage)
    step.finish_reason = finish_reason
    step.stop_reason = stop_reason
    step.response_id = response_id
    step.status = StepStatus.SUCCESS
    step.progression = StepProgression.FINISHED
    step.completed_at = completed_at or timezone.now()
    step.error_type = None
    step.error_data = None
    step.save()

    _record_outcome(step, metrics=metrics, provider_trace=provider_trace, messages=validated)
    return step


def error_data_from(
    *, message: str, exc: BaseException | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The error_data shape stored on a failed step: message, traceback and details."""
    tb = None
    if exc is not None:
        tb = "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))
    return {"message": message, "traceback": tb, "details": details or {}}


@transaction.atomic
def step_fail(
    *,
    step: Step,
    error_type: str,
    message: str,
    exc: BaseException | None = None,
    traceback: str | None = None,
    details: dict[str, Any] | None = None,
    stop_reason: str | None = StopReason.ERROR,
    status: StepStatus = StepStatus.FAILED,
    usage: Usage | None = None,
    metrics: StepMetricsIn | None = None,
    messages: Sequence[MessageIn | dict[str, Any]] = (),
    provider_trace: ProviderTraceIn | None = None,
    completed_at: datetime | None = None,
) -> Step:
    """End a step as failed (or cancelled) with error_type and error_data; the progression reached is kept.

    Idempotent: failing a step that already ended returns it unchanged.
    """
    validated = _validate_all(messages)
    step = _lock(step)
    if step.status in _FINAL:
        return step
    error_data = error_data_from(message=message, exc=exc, details=details)
    if traceback is not None:
        error_data["traceback"] = traceback
    step.status = status
    step.error_type = error_type
    step.error_data = error_data
    step.stop_reason = stop_reason
    step.completed_at = completed_at or timezone.now()
    if usage is not None:  # a stream that broke after the provider reported usage still cost money
        _apply_usage(step, usage)
    step.save()
    _record_outcome(step, metrics=metrics, provider_trace=provider_trace, messages=validated)
    return step


def step_cancel(*, step: Step, message: str = "Run cancelled.", **kwargs: Any) -> Step:
    """End a step as cancelled (the run was cancelled while it was in flight)."""
    return step_fail(
        step=step, error_type="cancelled", message=message, stop_reason=StopReason.CANCELLED,
        status=StepStatus.CANCELLED, **kwargs,
    )  # fmt: skip


def _messages_insert(
    *,
    organization_id: str,
    messages: Sequence[MessageIn],
    run: Run | None,
    step: Step | None,
    agent: Agent | None,
) -> list[Message]:
    # Sequence ids are allocated under a lock on the run (or step) row, so concurrent writers never collide.
    if run is not None:
        Run.objects.select_for_update().filter(pk=run.pk).exists()
        last = Message.objects.filter(run=run).aggregate(m=Max("sequence_id"))["m"] or 0
    elif step is not None:
        last = Message.objects.filter(step=step).aggregate(m=Max("sequence_id"))["m"] or 0
    else:
        last = 0
    rows = []
    for offset, message in enumerate(messages, start=1):
        data = message.model_dump(mode="json")
        rows.append(
            Message(
                organization_id=organization_id,
                agent=agent,
                run=run,
                step=step,
                role=data["role"],
                content=data["content"],
                name=data["name"],
                tool_calls=data["tool_calls"],
                tool_call_id=data["tool_call_id"],
                tool_returns=data["tool_returns"],
                otid=data["otid"],
                is_err=data["is_err"],
                sequence_id=last + offset,
            )
        )
    return Message.objects.bulk_create(rows)


@transaction.atomic
def messages_create(
    *,
    organization: Organization,
    messages: Sequence[MessageIn | dict[str, Any]],
    run: Run | None = None,
    step: Step | None = None,
    agent: Agent | None = None,
) -> list[Message]:
    """Validate and store messages (e.g. a run's input) in order; all or nothing."""
    validated = _validate_all(messages)
    if step is not None:
        run = run or step.run
        agent = agent or step.agent
    if run is not None:
        agent = agent or run.agent
    return _messages_insert(organization_id=organization.pk, messages=validated, run=run, step=step, agent=agent)


@transaction.atomic
def step_set_feedback(
    *,
    organization: Organization,
    step_id: str,
    feedback: str | None = None,
    set_feedback: bool = False,
    add_tags: Sequence[str] = (),
    remove_tags: Sequence[str] = (),
) -> Step:
    """Set or clear feedback and add/remove tags; tags are never replaced wholesale."""
    step = Step.objects.select_for_update().filter(pk=step_id, organization=organization).first()
    if step is None:
        raise NotFound("Step not found.", extra={"step_id": step_id})
    if set_feedback:
        if feedback is not None and feedback not in Feedback.values:
            raise ApplicationError("Invalid feedback.", extra={"feedback": f"must be one of {Feedback.values} or null"})
        step.feedback = feedback
    tags = (set(step.tags or []) | set(add_tags)) - set(remove_tags)
    step.tags = sorted(tags)
    step.save(update_fields=["feedback", "tags"])
    return step


def steps_fail_stale(*, older_than: timedelta) -> int:
    """Fail every step still pending after `older_than` (its worker died and nothing will finish it).

    Returns how many were failed. Each keeps the progression it reached, so the failure point is known.
    """
    cutoff = timezone.now() - older_than
    failed = 0
    for step in Step.objects.filter(status=StepStatus.PENDING, created_at__lt=cutoff).only("pk").iterator():
        ended = step_fail(
            step=step,
            error_type="worker_lost",
            message=f"Step was still pending after {older_than}; its worker stopped before finishing it.",
            stop_reason=StopReason.ERROR,
        )
        failed += ended.error_type == "worker_lost"
    return failed
