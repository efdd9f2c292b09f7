"""A run from start to stop: claim it (or resume it after a lost worker), drive its steps, record how it
ended and close its stream; and how a run is started and cancelled from a request."""

import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from agents.models import Run, RunStatus, StopReason
from agents.services import (
    RunLeased,
    lease_holder_dead,
    new_lease,
    run_claim,
    run_finish,
    run_holds_lease,
    run_lease_retry_in,
    run_request_cancel,
)
from config.logging_setup import log_context
from config.redaction import redact_text
from runner import services
from runner.conversation import approval_request_message, pending_tool_calls, run_history
from runner.loop.cancellation import (
    CancelWatcher,
    cancel_event_for,
    forget_cancel,
    reconnect_if_broken,
    signal_cancel,
)
from runner.loop.events import Publisher, publish_approval, run_end_events
from runner.loop.step import CANCELLED, Outcome, RunState, StepInput, llm_context, run_step
from runner.loop.tools import run_tools
from runner.providers import CancelEvent, LLMRequest, ToolSpec, get_adapter
from runner.tools import get_tool
from steps.models import Step, StepStatus
from steps.services import messages_create, steps_fail_pending
from traces import otel as telemetry

logger = logging.getLogger(__name__)


def run_execute(*, run_id: str) -> Run:
    """Execute (or resume) a run until it stops; every step ends in a final state.

    Raises RunLeased when a live worker executes the run already (its heartbeat is fresh).
    """
    with log_context(run_id=run_id):  # every log line of the run names it, in a worker or called directly
        return _execute(run_id=run_id)


def _execute(*, run_id: str) -> Run:
    run = Run.objects.select_related("agent", "organization").get(pk=run_id)
    if run.is_finished:
        return run
    if run.cancel_requested_at is not None and run.lease is None:
        return _finish(run, CANCELLED, Publisher(run), None)
    lease = new_lease()
    claimed = run_claim(run=run, lease=lease)
    if claimed is None and lease_holder_dead(run.lease):  # its process died on this machine: no need to wait
        claimed = run_claim(run=run, lease=lease, dead_lease=run.lease)
    if claimed is None:
        if run.is_finished:
            return run
        lost = run_lease_retry_in(run=run) <= 1 or lease_holder_dead(run.lease)
        if run.attempt >= settings.STEPLENS_RUN_MAX_ATTEMPTS and lost:
            return services.run_fail_lost(run=run)  # its last worker died too: nothing may resume it
        raise RunLeased(run.pk, retry_in=run_lease_retry_in(run=run))
    # A re-delivered run: the step in flight when the worker died will never finish; close it truthfully.
    steps_fail_pending(
        steps=Step.objects.filter(run=run),
        error_type="worker_lost",
        message="The worker running this step stopped before finishing it; the run was resumed.",
    )
    cancel = cancel_event_for(run.pk)
    publish = Publisher(run)
    state = RunState(lease=lease)
    try:
        with (
            CancelWatcher(run.pk, cancel, settings.STEPLENS_CANCEL_POLL_SECONDS, lease=lease),
            telemetry.run_span(run=run, agent=run.agent),
        ):
            outcome = _loop(run=run, cancel=cancel, publish=publish, state=state)
    except Exception as exc:  # an unexpected bug still ends the run truthfully
        logger.exception("run %s failed", run.pk)
        reconnect_if_broken()
        if run_holds_lease(run_id=run.pk, lease=lease):  # else the pending steps belong to the run's new worker
            steps_fail_pending(
                steps=Step.objects.filter(run=run), error_type="internal_error", message=str(exc), exc=exc,
                stop_reason=StopReason.ERROR,
            )  # fmt: skip
        outcome = Outcome(
            RunStatus.FAILED,
            StopReason.ERROR,
            {"error_type": "internal_error", "message": redact_text(str(exc)), "exception": type(exc).__name__},
        )
    finally:
        forget_cancel(run.pk)
    return _finish(run, outcome, publish, state)


def _finish(run: Run, outcome: Outcome, publish: Publisher, state: RunState | None) -> Run:
    """Record how the run ended and close its stream (unless another worker took the run over)."""
    ttft = state.first_chunk_ns - state.started_ns if state and state.first_chunk_ns else None
    duration = time.time_ns() - state.started_ns if state else None
    lease = state.lease if state else None
    run = run_finish(
        run=run, status=outcome.status, stop_reason=outcome.stop_reason, ttft_ns=ttft, total_duration_ns=duration,
        error_data=outcome.error,
        lease=lease,
    )  # fmt: skip
    if lease is not None and run.lease is not None:
        return run  # another worker took the run over (this one stalled past the lease): it ends the run
    for message_type, payload in run_end_events(run=run):
        publish(message_type, **payload)
    publish.done()
    return run


def _loop(*, run: Run, cancel: CancelEvent, publish: Publisher, state: RunState) -> Outcome:
    """Drive the run's steps until one ends the run (or max_steps is reached): how it ended."""
    agent = run.agent
    adapter, provider_model = get_adapter(agent.model_handle)
    tool_specs = [
        ToolSpec(name=t.name, description=t.description, parameters=t.parameters)
        for t in (get_tool(name) for name in agent.tools or [])
        if t is not None
    ]

    # A paused or re-delivered run may have tool calls still to run (approved, denied or interrupted).
    pending = pending_tool_calls(run=run)
    if pending.calls:
        step = Step.objects.filter(pk=pending.step_id).first()
        outcome = run_tools(
            calls=pending.calls, agent=agent, run=run, step=step, publish=publish, decisions=pending.decisions
        )
        if outcome.messages:
            messages_create(organization=run.organization, run=run, step=step, messages=outcome.messages)
        if outcome.needs_approval:
            return _request_approval(run=run, step=step, calls=outcome.needs_approval, publish=publish,
                                     already_requested=pending.requested)  # fmt: skip
        if outcome.invalid:
            return Outcome(RunStatus.COMPLETED, StopReason.INVALID_TOOL_CALL)
        if outcome.terminal:
            return Outcome(RunStatus.COMPLETED, StopReason.END_TURN)

    steps_done = Step.objects.filter(run=run, status=StepStatus.SUCCESS).count()
    for step_number in range(steps_done + 1, agent.max_steps + 1):
        if cancel.is_set():
            return CANCELLED
        request = LLMRequest(
            model=provider_model,
            messages=llm_context(agent=agent, history=run_history(run=run)),
            tools=tool_specs,
            temperature=agent.temperature,
            max_output_tokens=agent.max_output_tokens,
        )
        outcome = run_step(
            StepInput(run=run, agent=agent, adapter=adapter, request=request, step_number=step_number, cancel=cancel,
                      publish=publish, state=state)
        )  # fmt: skip
        if outcome.ended:
            return outcome
    return Outcome(RunStatus.COMPLETED, StopReason.MAX_STEPS)


def _request_approval(
    *, run: Run, step: Step | None, calls: list[dict[str, Any]], publish: Publisher, already_requested: set[str]
) -> Outcome:
    fresh = [c for c in calls if c["id"] not in already_requested]
    if fresh:
        messages_create(organization=run.organization, run=run, step=step, messages=[approval_request_message(fresh)])
    publish_approval(publish, calls, step)
    return Outcome(RunStatus.PAUSED, StopReason.REQUIRES_APPROVAL)


def run_cancel(*, run: Run) -> Run:
    """Ask a run to stop: an in-flight provider stream stops within a second and the step ends cancelled."""
    run_request_cancel(run=run)
    signal_cancel(run.pk)
    run.refresh_from_db()
    if run.status in {RunStatus.CREATED, RunStatus.PAUSED}:
        # Nothing is executing it: end it now (the loop records the cancellation and closes the stream).
        run = run_execute(run_id=run.pk)
    return run


def _execute_in_thread(run_id: str) -> None:
    try:
        run_execute(run_id=run_id)
    finally:
        connection.close()


def run_dispatch(*, run: Run, wait: bool) -> None:
    """Start a run: on a worker through the broker, or (embedded mode, no broker) in this process.

    Embedded mode runs a waiting request inline and a streaming or background one in a thread,
    so the same views work with and without Celery workers.
    """
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        services.run_enqueue(run=run)
    elif wait:
        run_execute(run_id=run.pk)
    else:
        transaction.on_commit(
            lambda: threading.Thread(
                target=_execute_in_thread, args=(run.pk,), name=f"run-{run.pk}", daemon=True
            ).start()
        )
