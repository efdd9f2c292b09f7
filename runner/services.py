"""What the runtime does to runs and agents: start a run with its messages and hand it to a worker, record a
human's approval, wait for a run executing elsewhere, sweep runs whose worker was lost, and the check that an
agent names a runnable model handle and registered tools.

The records themselves (create, claim, heartbeat, finish) are agents.services, one layer down.
"""

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import Organization
from agents.models import Agent, Run, RunStatus, StopReason
from agents.selectors import run_stream_ended
from agents.services import run_create, run_finish, run_stale_before
from config.errors import ApplicationError
from runner.conversation import APPROVED, DENIED, pending_tool_calls
from runner.providers import UnknownModelHandle, get_scenario, parse_model_handle
from runner.streams import DONE, follow
from runner.tools import validate_tool_names
from steps.models import Step
from steps.services import messages_create, steps_fail_pending

logger = logging.getLogger(__name__)


def model_handle_validate(model_handle: str) -> str:
    """The handle, if Steplens can run it (`provider/model` or `scripted/<scenario>`); a 400 otherwise."""
    try:
        prefix, model = parse_model_handle(model_handle)
        if prefix == "scripted":
            get_scenario(model)
    except (UnknownModelHandle, KeyError) as exc:
        raise ApplicationError("Invalid model_handle.", extra={"model_handle": str(exc).strip("'\"")}) from exc
    return model_handle


def agent_runtime_check(values: dict[str, Any]) -> None:
    """The runtime's check of an agent's values (registered with agents.services by RunnerConfig.ready).

    A model handle must be runnable here and every tool registered; the keys absent from `values` are not checked.
    """
    if "model_handle" in values:
        model_handle_validate(values["model_handle"])
    if "tools" in values:
        validate_tool_names(list(values["tools"] or []))


# --- runs -------------------------------------------------------------------------------------


def run_enqueue(*, run: Run) -> None:
    """Hand a run to a worker once the transaction that created it commits."""
    from runner.tasks import run_agent  # the task module imports this one

    transaction.on_commit(lambda: run_agent.apply_async(kwargs={"run_id": run.pk}))


@transaction.atomic
def run_start(
    *,
    organization: Organization,
    agent: Agent,
    messages: list[dict[str, Any]],
    request_id: str,
    background: bool = False,
    user_id: str | None = None,
    conversation_id: str | None = None,
) -> Run:
    """Create a run with its input messages (validated, all or nothing); the caller dispatches it."""
    if not messages:
        raise ApplicationError("No input messages.", extra={"messages": "at least one message is required"})
    run = run_create(
        organization=organization, agent=agent, request_id=request_id, background=background, user_id=user_id,
        conversation_id=conversation_id,
    )  # fmt: skip
    messages_create(organization=organization, run=run, messages=messages)
    return run


@transaction.atomic
def run_decide_approval(*, run: Run, tool_call_id: str, approve: bool, reason: str = "") -> set[str]:
    """Record a human's decision on a tool call awaiting approval.

    Returns the tool call ids still awaiting a decision; when it is empty the caller resumes the run.
    """
    run = Run.objects.select_for_update().get(pk=run.pk)
    if run.status != RunStatus.PAUSED:
        raise ApplicationError(f"Run is {run.status}, not waiting for an approval.", status_code=409)
    pending = pending_tool_calls(run=run)
    awaiting = {c["id"] for c in pending.calls} & pending.requested
    if tool_call_id not in awaiting:
        raise ApplicationError(
            "No tool call awaiting approval with this id.",
            extra={"tool_call_id": f"awaiting approval: {sorted(awaiting)}"},
            status_code=409,
        )
    if tool_call_id in pending.decisions:
        raise ApplicationError(
            "This tool call was already decided.", extra={"tool_call_id": "was already decided"}, status_code=409
        )
    messages_create(
        organization=run.organization,
        run=run,
        step=Step.objects.filter(pk=pending.step_id).first(),
        messages=[
            {
                "role": "approval",
                "name": APPROVED if approve else DENIED,
                "tool_call_id": tool_call_id,
                "content": [{"type": "text", "text": reason}] if reason else [],
            }
        ],
    )
    return awaiting - set(pending.decisions) - {tool_call_id}


def run_wait(*, run: Run, timeout: float) -> Run:
    """Block until a run executing elsewhere stops (its stream closes), or `timeout` passes."""
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        deadline = time.monotonic() + timeout
        # The run's row ends the wait too: a worker that died before publishing `done` leaves the run to the sweep.
        for event in follow(run.pk, idle_ms=1000, run_ended=lambda: run_stream_ended(run_id=run.pk)):
            if (event is not None and event.get("type") == DONE) or time.monotonic() > deadline:
                break
    run.refresh_from_db()
    return run


@dataclass(slots=True)
class StaleRuns:
    """What one sweep did: runs handed to a worker again, runs failed (out of attempts), queued runs re-sent."""

    resumed: int = 0
    failed: int = 0
    requeued: int = 0


_WORKER_LOST = "worker_lost"


def _fail_lost_steps(run: Run, *, stop_reason: str | None = None) -> None:
    steps_fail_pending(
        steps=Step.objects.filter(run=run),
        error_type=_WORKER_LOST,
        message="The worker running this step stopped before finishing it (no heartbeat).",
        stop_reason=stop_reason,
    )


def run_fail_lost(*, run: Run) -> Run:
    """End a run whose workers were lost STEPLENS_RUN_MAX_ATTEMPTS times: failed, stop reason `error`."""
    _fail_lost_steps(run, stop_reason=StopReason.ERROR)
    error = {
        "error_type": _WORKER_LOST,
        "message": f"The worker executing this run stopped {run.attempt} time(s) without finishing it "
        f"(no heartbeat for {settings.STEPLENS_STALE_RUN_SECONDS} s); no attempts left.",
        "attempt": run.attempt,
    }
    return run_finish(run=run, status=RunStatus.FAILED, stop_reason=StopReason.ERROR, error_data=error)


def runs_recover_stale() -> StaleRuns:
    """Finish what dead workers and lost tasks left behind; safe to run any time, from any number of processes.

    - A running run whose heartbeat is older than STEPLENS_STALE_RUN_SECONDS lost its worker: its pending steps
      fail as `worker_lost` and, with attempts left, the run is released and sent to a worker again (which
      resumes it after its last finished step); otherwise it fails with stop reason `error`.
    - A created run older than that bound may have lost its task with the broker: it is sent again (a duplicate
      task finds the run claimed or finished and does nothing), then again each time its age doubles.
    Each run is taken by one conditional UPDATE on the heartbeat it was read with, so concurrent sweeps act once.
    """
    cutoff = run_stale_before()
    outcome = StaleRuns()
    stale = Run.objects.filter(status=RunStatus.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    )
    for run in stale.select_related("organization"):
        taken = Run.objects.filter(pk=run.pk, status=RunStatus.RUNNING, heartbeat_at=run.heartbeat_at)
        if run.attempt >= settings.STEPLENS_RUN_MAX_ATTEMPTS:
            if taken.update(heartbeat_at=timezone.now()):
                run_fail_lost(run=run)
                outcome.failed += 1
            continue
        if taken.update(lease=None, heartbeat_at=timezone.now(), attempt=F("attempt") + 1):
            logger.warning("run %s lost its worker (attempt %s); sending it to a worker again", run.pk, run.attempt)
            _fail_lost_steps(run)
            run_enqueue(run=run)
            outcome.resumed += 1
    queued = Run.objects.filter(status=RunStatus.CREATED, created_at__lt=cutoff).filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=cutoff)
    )
    for run in queued:
        # The next re-send waits until the run's age doubles: a long queue gets a few duplicates, not one a bound.
        now = timezone.now()
        wait = max(now - run.created_at, timedelta(seconds=settings.STEPLENS_STALE_RUN_SECONDS))
        if Run.objects.filter(pk=run.pk, status=RunStatus.CREATED, heartbeat_at=run.heartbeat_at).update(
            heartbeat_at=now + wait - timedelta(seconds=settings.STEPLENS_STALE_RUN_SECONDS)
        ):
            run_enqueue(run=run)
            outcome.requeued += 1
    return outcome
