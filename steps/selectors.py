"""Reads for steps: every query is scoped to one organization; another organization's object is not found."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.http import QueryDict

from accounts.models import Organization
from agents.models import Run
from config.errors import NotFound
from steps.filters import step_filterset
from steps.models import Message, Step, StepMetrics, StepStatus
from steps.pagination import DEFAULT_LIMIT, Page, expanded_keyset_page, keyset_page
from steps.rendering import render_message

USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def step_get(*, organization: Organization, step_id: str) -> Step:
    """One step of `organization` with its metrics; another organization's step is not found."""
    step = Step.objects.select_related("metrics", "agent", "run").filter(organization=organization, pk=step_id).first()
    if step is None:
        raise NotFound("Step not found.")
    return step


def step_queryset(*, organization: Organization, filters: Mapping[str, Any] | QueryDict | None = None) -> QuerySet:
    """`organization`'s steps narrowed by the step filters (steps.filters); invalid filters are a 400."""
    return step_filterset(organization=organization, params=filters or {}).qs


def step_list(
    *,
    organization: Organization,
    filters: Mapping[str, Any] | QueryDict | None = None,
    order: str = "desc",
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    """A page of steps, newest first (or oldest with order=asc), keyed on (created_at, id)."""
    queryset = step_queryset(organization=organization, filters=filters)
    return keyset_page(
        queryset=queryset, kind="steps", fields=("created_at", "id"), types=(datetime, str), order=order,
        limit=limit, cursor=cursor,
    )  # fmt: skip


def step_messages(
    *,
    organization: Organization,
    step_id: str,
    order: str = "asc",
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> Page:
    """A page of the messages a step produced (or was given) as the typed message union, in sequence order.

    `limit` counts what is returned: one stored message may render as several typed messages (reasoning, text,
    tool calls), and a page may stop inside one; the cursor goes on from there.
    """
    step = Step.objects.filter(organization=organization, pk=step_id).only("pk").first()
    if step is None:
        raise NotFound("Step not found.")
    queryset = Message.objects.filter(step=step)
    return expanded_keyset_page(
        queryset=queryset, kind=f"message-items:{step_id}", fields=("sequence_id", "id"), types=(int, str),
        expand=render_message, order=order, limit=limit, cursor=cursor,
    )  # fmt: skip


def run_messages(*, run_id: str, role: str | None = None, newest_first: bool = False) -> QuerySet[Message]:
    """The messages stored for a run's steps (only `role`'s, when given), in sequence order or newest first."""
    messages = Message.objects.filter(run_id=run_id)
    if role is not None:
        messages = messages.filter(role=role)
    return messages.order_by("-sequence_id" if newest_first else "sequence_id")


def step_metrics_get(*, organization: Organization, step_id: str) -> StepMetrics:
    """A step's timings; a step that has none yet gets an empty (all null) StepMetrics, not a 404."""
    step = step_get(organization=organization, step_id=step_id)
    try:
        return step.metrics
    except StepMetrics.DoesNotExist:
        return StepMetrics(step=step)


def run_usage_totals(*, run_id: str) -> dict[str, Any]:
    """A run's step count, failed steps, token sums and cost, summed by the database (every attempt counts)."""
    return Step.objects.filter(run_id=run_id).aggregate(
        steps=Count("pk"),
        failed_steps=Count("pk", filter=Q(status=StepStatus.FAILED)),
        cost_usd=Sum("cost_usd"),
        **{name: Sum(name) for name in USAGE_FIELDS},
    )


def run_usage(*, organization: Organization, run_id: str) -> dict[str, Any]:
    """The usage of every step of a run (however many), with the run's totals summed by the database."""
    run = Run.objects.filter(organization=organization, pk=run_id).only("pk", "agent_id", "request_id").first()
    if run is None:
        raise NotFound("Run not found.")
    steps = Step.objects.filter(run=run)
    totals = run_usage_totals(run_id=run.pk)
    columns = ["id", "step_number", "attempt", "status", "provider_name", "model", "model_handle", *USAGE_FIELDS]
    columns += ["cost_usd", "ttft_ns", "latency_ns", "created_at"]
    rows = list(steps.order_by("created_at", "id").values(*columns))
    return {"run_id": run.pk, "agent_id": run.agent_id, "request_id": run.request_id, "totals": totals, "steps": rows}
