"""Writes for agents and runs: the records only (create, claim, heartbeat, finish, bulk-record).

What drives a run (enqueue, start with its messages, approvals, waiting, the stale-run sweep) is the runtime's,
in runner.services, one layer up: this module imports nothing above agents.
"""

import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Case, F, PositiveSmallIntegerField, Q, When
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from accounts.models import Organization, Project
from agents.models import Agent, Run, RunStatus
from config.errors import ApplicationError

_FINISHED = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
logger = logging.getLogger(__name__)


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


class RunLeased(Exception):
    """Another worker holds the run's lease and its heartbeat is fresh; try again after `retry_in` seconds."""

    def __init__(self, run_id: str, *, retry_in: float) -> None:
        super().__init__(f"run {run_id} is executing elsewhere; retry in {retry_in:.0f} s")
        self.retry_in = retry_in


def _process_place() -> str:
    """This host and PID namespace: where a lease holder's pid means something (containers share host names)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()[:24]}:{namespace}"


def new_lease() -> str:
    """A lease token naming this process (host, pid namespace and pid) and this execution."""
    return f"{_process_place()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def lease_holder_dead(lease: str | None) -> bool:
    """Is the process holding `lease` known to be gone? Only provable on its own host and pid namespace.

    A prefork child killed under its run, or a worker killed and replaced on the same machine, is seen at once,
    so its run is taken over without waiting for the heartbeat to go stale. Anywhere else (or a reused pid)
    the answer is False and the heartbeat bound decides.
    """
    if not lease:
        return False
    place, _, rest = lease.rpartition(":")[0].rpartition(":")
    if place != _process_place() or not rest.isdigit():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def run_stale_before() -> datetime:
    """A running run whose heartbeat is older than this lost its worker (STEPLENS_STALE_RUN_SECONDS ago)."""
    return timezone.now() - timedelta(seconds=settings.STEPLENS_STALE_RUN_SECONDS)


def run_claim(*, run: Run, lease: str, dead_lease: str | None = None) -> Run | None:
    """Take the run for this execution, or None when a live worker holds it (see `RunLeased`).

    One conditional UPDATE decides, so two workers handed the same run (a re-delivered task, a sweep's
    re-dispatch) never both execute it: a run is free when nobody holds it (created, paused, released by the
    sweep), or taken over, with attempts left (attempt + 1), when its holder's heartbeat is stale or its holder
    is `dead_lease` (a lease whose process is known to be gone: `lease_holder_dead`). A finished run is never
    claimed.
    """
    free = Q(lease__isnull=True)
    lost = Q(heartbeat_at__lt=run_stale_before()) | Q(heartbeat_at__isnull=True)
    if dead_lease is not None:
        lost |= Q(lease=dead_lease)
    stale = Q(lease__isnull=False, attempt__lt=settings.STEPLENS_RUN_MAX_ATTEMPTS) & lost
    claimed = (
        Run.objects.filter(free | stale, pk=run.pk)
        .exclude(status__in=_FINISHED)
        .update(
            status=RunStatus.RUNNING,
            lease=lease,
            heartbeat_at=timezone.now(),
            started_at=Coalesce("started_at", Now()),
            attempt=Case(
                When(lease__isnull=False, then=F("attempt") + 1),
                default=F("attempt"),
                output_field=PositiveSmallIntegerField(),
            ),
        )
    )
    run.refresh_from_db()
    return run if claimed else None


def run_heartbeat(*, run_id: str, lease: str) -> bool:
    """Touch the run's lease; False when the run's row shows another holder, or none (taken over or ended): stop."""
    if Run.objects.filter(pk=run_id, lease=lease).update(heartbeat_at=timezone.now()):
        return True
    # Lost only when the row says so: a row this connection cannot see (the run created in a transaction not yet
    # committed, as in a test) is no takeover, and stopping the run then would cancel it for nothing.
    return not Run.objects.filter(pk=run_id).exclude(lease=lease).exists()


def run_holds_lease(*, run_id: str, lease: str) -> bool:
    return Run.objects.filter(pk=run_id, lease=lease).exists()


def run_lease_retry_in(*, run: Run) -> float:
    """Seconds until the holder of `run`'s lease counts as lost, if it stops heartbeating now."""
    if run.heartbeat_at is None:
        return 1.0
    expires = run.heartbeat_at + timedelta(seconds=settings.STEPLENS_STALE_RUN_SECONDS)
    return max(1.0, (expires - timezone.now()).total_seconds() + 1)


@transaction.atomic
def run_finish(
    *,
    run: Run,
    status: RunStatus,
    stop_reason: str | None,
    ttft_ns: int | None = None,
    total_duration_ns: int | None = None,
    error_data: dict[str, Any] | None = None,
    lease: str | None = None,
) -> Run:
    """End a run (completed, failed, cancelled or paused) and release its lease.

    A run that already finished is returned unchanged, and so is one whose lease `lease` no longer holds
    (another worker took it over; that worker ends it).
    """
    run = Run.objects.select_for_update().get(pk=run.pk)
    if run.status in _FINISHED or (lease is not None and run.lease != lease):
        return run
    run.lease = None
    run.status = status
    run.stop_reason = stop_reason
    # A run paused for an approval runs in segments (one run_execute each). `total_duration_ns` is the time of
    # the segment that ends here and is added to the run's total; the time spent waiting for a human is not
    # counted. `ttft_ns` is measured from the start of the segment that produced the first chunk, so it is
    # never more than that segment, hence never more than the total.
    if ttft_ns is not None and run.ttft_ns is None:
        run.ttft_ns = ttft_ns
    if total_duration_ns is not None:
        run.total_duration_ns = (run.total_duration_ns or 0) + total_duration_ns
    if error_data is not None:
        run.error_data = error_data
    if status in _FINISHED:
        run.completed_at = timezone.now()
    run.save()
    return run


# --- agents -----------------------------------------------------------------------------------

_AGENT_FIELDS = (
    "name", "model_handle", "system", "tools", "temperature", "max_output_tokens", "context_window", "max_steps",
    "tags", "metadata",
)  # fmt: skip

AgentCheck = Callable[[dict[str, Any]], None]
_agent_checks: list[AgentCheck] = []


def agent_check_register(check: AgentCheck) -> None:
    """Add a check that an agent's values pass on create and update, and in the admin form.

    Which model handles and tools an agent may name is known to the runtime above this app (runner), which
    registers its check when Django starts (RunnerConfig.ready); so this app imports nothing from it.
    """
    if check not in _agent_checks:
        _agent_checks.append(check)


def agent_values_check(values: dict[str, Any]) -> None:
    """Raise ApplicationError (a 400) when a registered check refuses `values`; only the keys present are checked."""
    for check in _agent_checks:
        check(values)


def _check_agent(organization: Organization, values: dict[str, Any], agent_id: str | None = None) -> None:
    agent_values_check(values)
    if "name" in values:
        clash = Agent.objects.filter(organization=organization, name=values["name"], deleted_at__isnull=True)
        if clash.exclude(pk=agent_id).exists():
            raise ApplicationError(
                "Agent name taken.", extra={"name": f"an agent named {values['name']!r} exists"}, status_code=409
            )


@transaction.atomic
def agent_create(*, organization: Organization, project: Project | None = None, **values: Any) -> Agent:
    """Create an agent; unknown tools, an unusable model handle or a taken name are 400s."""
    values = {k: v for k, v in values.items() if k in _AGENT_FIELDS and v is not None}
    _check_agent(organization, values)
    # A project-limited API key's agents (and so their runs and steps) belong to its project.
    project_id = project.pk if project is not None else organization.scoped_project_id
    return Agent.objects.create(organization=organization, project_id=project_id, **values)


@transaction.atomic
def agent_update(*, agent: Agent, **values: Any) -> Agent:
    values = {k: v for k, v in values.items() if k in _AGENT_FIELDS}
    _check_agent(agent.organization, values, agent_id=agent.pk)
    for name, value in values.items():
        setattr(agent, name, value)
    agent.save()
    return agent


def agent_delete(*, agent: Agent) -> None:
    """Soft delete: the agent disappears from the API but its runs and steps stay browsable."""
    agent.deleted_at = timezone.now()
    agent.save(update_fields=["deleted_at", "updated_at"])


# --- runs -------------------------------------------------------------------------------------


def run_request_cancel(*, run: Run) -> None:
    """Flag a run as asked to stop (once); its worker notices the flag (runner.loop.run_cancel also signals it)."""
    Run.objects.filter(pk=run.pk, cancel_requested_at__isnull=True).update(cancel_requested_at=timezone.now())


def agent_get_or_create(
    *,
    organization: Organization,
    name: str,
    model_handle: str = "",
    metadata: dict[str, Any] | None = None,
    project: Project | None = None,
) -> Agent:
    """The organization's live agent called `name`, created (with `model_handle`, in `project`) when there is none.

    Used by the OTLP ingest for agents seen in `invoke_agent` spans. Safe under concurrent calls: a lost race
    on the unique live name returns the winner's row.
    """
    agent = Agent.objects.filter(organization=organization, name=name, deleted_at__isnull=True).first()
    if agent is not None:
        return agent
    try:
        with transaction.atomic():
            return Agent.objects.create(
                organization=organization,
                name=name,
                model_handle=model_handle,
                metadata=metadata or {},
                project=project,
            )
    except IntegrityError:
        return Agent.objects.get(organization=organization, name=name, deleted_at__isnull=True)


@dataclass(slots=True)
class RunRecord:
    """A run that already ended (an ingested `invoke_agent` span), recorded in one go by `runs_record_many`."""

    agent: Agent | None
    trace_id: str
    span_id: str
    request_id: str
    status: RunStatus
    stop_reason: str | None
    created_at: datetime
    completed_at: datetime
    total_duration_ns: int | None = None
    ttft_ns: int | None = None
    user_id: str | None = None
    conversation_id: str | None = None
    origin: str = "otlp"
    metadata: dict[str, Any] | None = None
    error_data: dict[str, Any] | None = None
    project: Project | None = None  # default: the agent's


@transaction.atomic
def runs_record_many(
    *, organization: Organization, records: Sequence[RunRecord]
) -> tuple[dict[tuple[str, str], Run], set[str]]:
    """Record ended runs in bulk, idempotently on (organization, trace_id, span_id).

    Returns every run of those spans by (trace_id, span_id), stored before or now, and the ids of the ones this
    call inserted. A concurrent call inserting the same span wins without error.
    """
    if not records:
        return {}, set()
    keys = {(r.trace_id, r.span_id) for r in records}

    def stored() -> dict[tuple[str, str], Run]:
        rows = Run.objects.select_related("agent").filter(
            organization=organization, trace_id__in={k[0] for k in keys}, span_id__in={k[1] for k in keys}
        )
        return {(run.trace_id, run.span_id): run for run in rows if (run.trace_id, run.span_id) in keys}

    existing = stored()
    new: dict[tuple[str, str], Run] = {}
    for record in records:
        key = (record.trace_id, record.span_id)
        if key in existing or key in new:
            continue
        if record.agent is not None and record.agent.organization_id != organization.pk:
            raise ApplicationError("Agent belongs to another organization.", status_code=404)
        new[key] = Run(
            organization=organization,
            project=record.project or (record.agent.project if record.agent else None),
            agent=record.agent,
            request_id=record.request_id,
            status=record.status,
            stop_reason=record.stop_reason,
            ttft_ns=record.ttft_ns,
            total_duration_ns=record.total_duration_ns,
            user_id=record.user_id,
            conversation_id=record.conversation_id,
            trace_id=record.trace_id,
            span_id=record.span_id,
            origin=record.origin,
            metadata=record.metadata or {},
            error_data=record.error_data,
            started_at=record.created_at,
            completed_at=record.completed_at,
        )
    if not new:
        return existing, set()
    Run.objects.bulk_create(new.values(), ignore_conflicts=True)
    runs = stored()
    inserted = {run.pk for key, run in new.items() if runs.get(key) is not None and runs[key].pk == run.pk}
    return runs, inserted
