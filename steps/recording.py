"""The rules of recording a step, one function each, shared by both write paths of steps.services.

The per-step path (the agent loop: step_start, then step_finish / step_fail) and the bulk path (steps_record_many:
the OTLP ingest) differ only in their I/O: one statement per row there, multi-row inserts or COPY here. What a
row holds comes from these functions: the fields a step inherits from its run, the outcome of a finished or failed
step (usage, cost, latency, error data), the StepMetrics row, the Message rows and their sequence ids, and the
run's step count. Provider-trace rows follow steps.provider_traces.provider_trace_values, rollup and errors-rollup
deltas steps.rollups (usage_rows, error_rows, subject_rows).
"""

import traceback as traceback_module
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

from accounts.models import Project
from agents.models import Agent, Run
from steps.costs import step_cost
from steps.models import Step, StepProgression, StepStatus
from steps.values import MessageIn, Usage

T = TypeVar("T")


@dataclass(slots=True)
class StepMetricsIn:
    """Timings of a step in nanoseconds (epoch ns for the *_start_ns fields)."""

    step_start_ns: int | None = None
    llm_request_start_ns: int | None = None
    llm_request_ns: int | None = None
    ttft_ns: int | None = None
    tool_execution_ns: int | None = None
    step_ns: int | None = None


# The StepMetrics columns, named as in StepMetricsIn.
METRIC_FIELDS = tuple(f.name for f in fields(StepMetricsIn))


def step_links(
    *,
    run: Run | None,
    agent: Agent | None,
    project: Project | None,
    request_id: str | None,
    user_id: str | None,
    conversation_id: str | None,
) -> dict[str, Any]:
    """What a step takes from its run when the caller does not say (by attname): its agent, its project (else the
    run's, else the agent's), request id, end user and conversation."""
    agent_id = agent.pk if agent is not None else (run.agent_id if run is not None else None)
    project_id = project.pk if project is not None else (run.project_id if run is not None else None)
    if project_id is None:
        owner = agent if agent is not None else (run.agent if run is not None and run.agent_id else None)
        project_id = owner.project_id if owner is not None else None
    return {
        "agent_id": agent_id,
        "run_id": run.pk if run is not None else None,
        "project_id": project_id,
        "request_id": request_id if request_id is not None else (run.request_id if run else None),
        "user_id": user_id if user_id is not None else (run.user_id if run else None),
        "conversation_id": conversation_id if conversation_id is not None else (run.conversation_id if run else None),
    }


def usage_values(*, step: Step, usage: Usage, model: str | None) -> dict[str, Any]:
    """The usage columns of a step and its cost (priced when the step was created)."""
    cost = step_cost(provider=step.provider_name, model=model, usage=usage, when=step.created_at)
    return {
        **usage.as_counts(),
        "prompt_tokens_details": usage.prompt_tokens_details,
        "completion_tokens_details": usage.completion_tokens_details,
        "cost_usd": cost.usd,
        "cost_detail": cost.detail,
    }


def timing_values(metrics: StepMetricsIn | None) -> dict[str, Any]:
    """The timings copied onto the step for the list filters and the reports: TTFT, and the latency (the LLM
    request's duration, else the whole step's)."""
    if metrics is None:
        return {}
    latency = metrics.llm_request_ns if metrics.llm_request_ns is not None else metrics.step_ns
    return {"ttft_ns": metrics.ttft_ns, "latency_ns": latency}


def success_values(
    *,
    step: Step,
    usage: Usage,
    model: str | None,
    finish_reason: str | None,
    stop_reason: str | None,
    response_id: str | None,
    metrics: StepMetricsIn | None,
    completed_at: datetime,
) -> dict[str, Any]:
    """The columns a step ends with when it succeeded."""
    model = model or step.model
    return {
        "model": model,
        **usage_values(step=step, usage=usage, model=model),
        "finish_reason": finish_reason,
        "stop_reason": stop_reason,
        "response_id": response_id,
        "status": StepStatus.SUCCESS,
        "progression": StepProgression.FINISHED,
        "completed_at": completed_at,
        "error_type": None,
        "error_data": None,
        **timing_values(metrics),
    }


def error_data_from(
    *, message: str, exc: BaseException | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The error_data shape stored on a failed step: message, traceback and details."""
    tb = None
    if exc is not None:
        tb = "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))
    return {"message": message, "traceback": tb, "details": details or {}}


def failure_values(
    *,
    step: Step,
    error_type: str,
    error_data: dict[str, Any],
    stop_reason: str | None,
    status: StepStatus,
    usage: Usage | None,
    metrics: StepMetricsIn | None,
    completed_at: datetime,
) -> dict[str, Any]:
    """The columns a step ends with when it failed (or was cancelled). The progression it reached is not among
    them: it stays what it was. Usage counts when given: a call that broke after the provider reported usage
    still cost money."""
    values: dict[str, Any] = {
        "status": status,
        "error_type": error_type,
        "error_data": error_data,
        "stop_reason": stop_reason,
        "completed_at": completed_at,
        **timing_values(metrics),
    }
    if usage is not None:
        values.update(usage_values(step=step, usage=usage, model=step.model))
    return values


def reported_progression(usage: Usage) -> StepProgression:
    """How far a failed call that is recorded after the fact got: a response with usage arrived, or nothing did."""
    reported = usage.prompt_tokens is not None or usage.completion_tokens is not None
    return StepProgression.RESPONSE_RECEIVED if reported else StepProgression.START


def metrics_values(metrics: StepMetricsIn) -> dict[str, Any]:
    """A StepMetrics row's columns (the step aside)."""
    return {name: getattr(metrics, name) for name in METRIC_FIELDS}


def message_values(message: MessageIn) -> dict[str, Any]:
    """A Message row's own columns (the JSON ones as Python values; links, sequence id and created_at aside)."""
    data = message.model_dump(mode="json")
    return {
        "role": data["role"],
        "content": data["content"],
        "name": data["name"],
        "tool_calls": data["tool_calls"],
        "tool_call_id": data["tool_call_id"],
        "tool_returns": data["tool_returns"],
        "otid": data["otid"],
        "is_err": data["is_err"],
    }


def message_sequences(
    *,
    items: Iterable[tuple[T, str | None, Sequence[MessageIn]]],
    last_by_run: dict[str, int],
    last_without_run: int = 0,
) -> list[tuple[T, MessageIn, int]]:
    """The sequence id of every message of `items` ((owner, run id, messages), in the order the owners' messages
    come: steps by (created_at, id)). In a run, ids continue after the run's last one (`last_by_run`, read under
    the run's row lock, is advanced); messages without a run are numbered after `last_without_run` (their step's
    own last one), per owner."""
    numbered = []
    for owner, run_id, messages in items:
        for offset, message in enumerate(messages, start=1):
            if run_id:
                last_by_run[run_id] = sequence = last_by_run.get(run_id, 0) + 1
            else:
                sequence = last_without_run + offset
            numbered.append((owner, message, sequence))
    return numbered


def run_step_counts(steps: Iterable[Step]) -> dict[str, int]:
    """How much each run's step_count grows: one per ended step of the run (every attempt counts)."""
    counts: dict[str, int] = {}
    for step in steps:
        if step.run_id:
            counts[step.run_id] = counts.get(step.run_id, 0) + 1
    return counts
