"""Reads for provider traces and the request-id join: everything one request produced, in one place."""

from dataclasses import dataclass, field

from django.db.models import Q

from accounts.models import Organization
from agents.models import Run
from config.errors import NotFound
from steps.models import Message, Step
from traces.models import ProviderTrace


def provider_traces_for_step(*, organization: Organization, step_id: str) -> list[ProviderTrace]:
    """Every attempt's provider trace of a step, oldest attempt first; an unknown step is not found."""
    if not Step.objects.filter(organization=organization, pk=step_id).exists():
        raise NotFound("Step not found.", extra={"step_id": step_id})
    return list(ProviderTrace.objects.filter(organization=organization, step_id=step_id).order_by("attempt"))


def provider_trace_get(*, organization: Organization, step_id: str, attempt: int | None = None) -> ProviderTrace:
    """A step's provider trace: the given attempt, or the last one."""
    traces = provider_traces_for_step(organization=organization, step_id=step_id)
    if attempt is not None:
        traces = [t for t in traces if t.attempt == attempt]
    if not traces:
        raise NotFound("No provider trace for this step.", extra={"step_id": step_id, "attempt": attempt})
    return traces[-1]


@dataclass(slots=True)
class RequestRecord:
    """Everything recorded for one request id: runs, steps (with metrics), messages, traces and errors."""

    request_id: str
    runs: list[Run] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    provider_traces: list[ProviderTrace] = field(default_factory=list)


def request_get(*, organization: Organization, request_id: str) -> RequestRecord:
    """The request-id join. Steps match on their own request_id or through their run's.

    Four indexed queries whatever the size of the organization; not found when nothing carries the id.
    """
    runs = list(
        Run.objects.filter(organization=organization, request_id=request_id)
        .select_related("agent")
        .order_by("created_at", "id")
    )
    run_ids = [run.pk for run in runs]
    step_match = Q(request_id=request_id)
    if run_ids:
        step_match |= Q(run_id__in=run_ids)
    steps = list(
        Step.objects.filter(step_match, organization=organization)
        .select_related("metrics")
        .order_by("created_at", "id")
    )
    if not runs and not steps:
        raise NotFound("Nothing recorded for this request id.", extra={"request_id": request_id})
    step_ids = [step.pk for step in steps]
    message_match = Q(step_id__in=step_ids)
    if run_ids:
        message_match |= Q(run_id__in=run_ids)
    messages = list(
        Message.objects.filter(message_match, organization=organization).order_by("run_id", "sequence_id", "id")
    )
    traces = list(
        ProviderTrace.objects.filter(organization=organization, step_id__in=step_ids).order_by("created_at", "id")
    )
    return RequestRecord(request_id=request_id, runs=runs, steps=steps, messages=messages, provider_traces=traces)
