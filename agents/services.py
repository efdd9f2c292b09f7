"""Writes for agents and runs."""

from typing import Any

from django.db import transaction
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from accounts.models import Organization, Project
from agents.models import Agent, Run, RunStatus
from config.errors import ApplicationError

_FINISHED = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}


@transaction.atomic
def run_create(
    *,
    organization: Organization,
    agent: Agent | None,
    request_id: str,
    background: bool = False,
    project: Project | None = None,
    user_id: str | None = None,
    conversation_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    origin: str = "agent_loop",
    trace_id: str | None = None,
    span_id: str | None = None,
) -> Run:
    """Create a run in status `created` for `agent` under `request_id`."""
    if agent is not None and agent.organization_id != organization.pk:
        raise ApplicationError("Agent belongs to another organization.", status_code=404)
    return Run.objects.create(
        organization=organization,
        project=project or (agent.project if agent else None),
        agent=agent,
        request_id=request_id,
        background=background,
        user_id=user_id,
        conversation_id=conversation_id,
        metadata=metadata or {},
        origin=origin,
        trace_id=trace_id,
        span_id=span_id,
    )


def run_mark_running(*, run: Run) -> Run:
    """Move a created, paused or re-delivered run to running; a finished run is left alone."""
    Run.objects.filter(pk=run.pk).exclude(status__in=_FINISHED).update(
        status=RunStatus.RUNNING, started_at=Coalesce("started_at", Now())
    )
    run.refresh_from_db()
    return run


@transaction.atomic
def run_finish(
    *,
    run: Run,
    status: RunStatus,
    stop_reason: str | None,
    ttft_ns: int | None = None,
    total_duration_ns: int | None = None,
    error_data: dict[str, Any] | None = None,
) -> Run:
    """End a run (completed, failed, cancelled or paused). A run that already finished is returned unchanged."""
    run = Run.objects.select_for_update().get(pk=run.pk)
    if run.status in _FINISHED:
        return run
    run.status = status
    run.stop_reason = stop_reason
    if ttft_ns is not None and run.ttft_ns is None:
        run.ttft_ns = ttft_ns
    if total_duration_ns is not None:
        run.total_duration_ns = total_duration_ns
    if error_data is not None:
        run.error_data = error_data
    if status in _FINISHED:
        run.completed_at = timezone.now()
    run.save()
    return run
