"""The agent loop: one run, step by step, recorded through the step services.

Per step: build the context from the run's messages, stream the provider's answer (publishing chunks
to the run's stream), record the step with its usage, cost, metrics, provider trace and messages,
run the tool calls, and decide whether to go on. A run re-delivered after a worker died resumes
after its last finished step; the step that was in flight is failed as `worker_lost`.
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Max

from agents.models import Agent, Run, RunStatus, StopReason
from agents.providers import (
    LLMRequest,
    LLMResult,
    ProviderCancelled,
    ProviderError,
    StreamChunk,
    ToolSpec,
    get_adapter,
)
from agents.providers.redaction import redact_text
from agents.services import (
    RunLeased,
    lease_holder_dead,
    new_lease,
    run_claim,
    run_fail_lost,
    run_finish,
    run_heartbeat,
    run_holds_lease,
    run_lease_retry_in,
)
from agents.streams import DONE, get_run_stream
from agents.tools import Tool, execute_tool, get_tool
from steps.content import MessageIn
from steps.models import Message, Step, StepProgression, StepStatus
from steps.selectors import USAGE_FIELDS, run_usage_totals
from steps.services import (
    StepMetricsIn,
    messages_create,
    step_cancel,
    step_fail,
    step_finish,
    step_progress,
    step_start,
    steps_fail_pending,
)
from steps.usage import Usage
from traces import otel as telemetry
from traces.services import ProviderTraceIn

logger = logging.getLogger(__name__)

APPROVAL_REQUEST = "approval_request"
APPROVED = "approved"
DENIED = "denied"


# --- cancellation -----------------------------------------------------------------------------


_local_cancels: dict[str, threading.Event] = {}
_local_lock = threading.Lock()


def cancel_event_for(run_id: str) -> threading.Event:
    """The process-local event that stops a run's in-flight provider stream."""
    with _local_lock:
        return _local_cancels.setdefault(run_id, threading.Event())


def signal_cancel(run_id: str) -> None:
    """Stop a run running in this process at once (other processes notice the database flag)."""
    with _local_lock:
        event = _local_cancels.get(run_id)
    if event is not None:
        event.set()


class _CancelWatcher:
    """Polls the run's cancel flag so a run executing in another process stops within a second, and keeps the
    run's lease alive (a heartbeat every STEPLENS_RUN_HEARTBEAT_SECONDS).

    A heartbeat that finds the lease gone (the run was taken over after this worker stalled past the bound)
    stops the run here as if cancelled; the new holder finishes it.
    """

    def __init__(self, run_id: str, event: threading.Event, interval: float, *, lease: str | None = None) -> None:
        self._run_id, self._event, self._interval, self._lease = run_id, event, interval, lease
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"cancel-watch-{run_id}", daemon=True)
        self.lost = False

    def __enter__(self) -> "_CancelWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)

    def _watch(self) -> None:
        beat_every = settings.STEPLENS_RUN_HEARTBEAT_SECONDS
        last_beat = time.monotonic()
        try:
            while not self._stopped.wait(self._interval) and not self._event.is_set():
                if self._lease is not None and time.monotonic() - last_beat >= beat_every:
                    if not self._beat():
                        self.lost = True
                        self._event.set()
                        break
                    last_beat = time.monotonic()
                if Run.objects.filter(pk=self._run_id, cancel_requested_at__isnull=False).exists():
                    self._event.set()
        except Exception:  # the database going away must not kill the run; the main loop sees it too
            logger.warning("cancel watcher for %s stopped", self._run_id, exc_info=True)
        finally:
            connection.close()

    def _beat(self) -> bool:
        try:
            return run_heartbeat(run_id=self._run_id, lease=self._lease)
        except Exception:  # a database blip: the next beat tries again (the bound allows many missed beats)
            logger.warning("heartbeat of %s failed", self._run_id, exc_info=True)
            _reconnect_if_broken()
            return True


# --- history ----------------------------------------------------------------------------------


def _history(run: Run) -> list[Message]:
    return list(Message.objects.filter(run=run).order_by("sequence_id"))


def _as_message_in(message: Message) -> MessageIn:
    return MessageIn.model_validate(
        {
            "role": message.role,
            "content": message.content or [],
            "name": message.name,
            "tool_calls": message.tool_calls,
            "tool_call_id": message.tool_call_id,
            "tool_returns": message.tool_returns,
            "otid": message.otid,
            "is_err": message.is_err,
        }
    )


def _context(agent: Agent, history: list[Message]) -> list[MessageIn]:
    """What the model sees: the system prompt and the run's conversation (approval bookkeeping left out)."""
    messages = [MessageIn(role="system", content=[{"type": "text", "text": agent.system}])] if agent.system else []
    messages += [_as_message_in(m) for m in history if m.role != "approval"]
    return messages


@dataclass
class _Pending:
    """Tool calls of the last assistant message that have no tool return yet."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    decisions: dict[str, Message] = field(default_factory=dict)  # tool_call_id -> approval response
    requested: set[str] = field(default_factory=set)  # tool_call_ids with an approval request
    step_id: str | None = None


def _pending_tool_calls(history: list[Message]) -> _Pending:
    pending = _Pending()
    last_assistant = next((m for m in reversed(history) if m.role == "assistant"), None)
    if last_assistant is None or not last_assistant.tool_calls:
        return pending
    answered = {
        ret["tool_call_id"]
        for m in history
        if m.role == "tool" and m.sequence_id > last_assistant.sequence_id
        for ret in (m.tool_returns or [])
    }
    pending.calls = [c for c in last_assistant.tool_calls if c["id"] not in answered]
    pending.step_id = last_assistant.step_id
    for m in history:
        if m.role == "approval" and m.sequence_id > last_assistant.sequence_id:
            if m.name == APPROVAL_REQUEST:
                pending.requested |= {c["id"] for c in m.tool_calls or []}
            elif m.tool_call_id:
                pending.decisions[m.tool_call_id] = m
    return pending


def pending_tool_calls(*, run: Run) -> _Pending:
    """The run's tool calls still to be run, with approval requests and decisions made so far."""
    return _pending_tool_calls(_history(run))


# --- events -----------------------------------------------------------------------------------


class _Publisher:
    """Sends a run's events to its stream; a stream backend that is down never fails or slows the run.

    After a failed publish the next events are dropped without trying for `_PAUSE_SECONDS` (each try against a
    Redis that is restarting costs its connect retries), then publishing resumes.
    """

    _PAUSE_SECONDS = 2.0

    def __init__(self, run: Run) -> None:
        self.run_id = run.pk
        self.stream = get_run_stream()
        self._paused_until = 0.0

    def _publish(self, event: dict[str, Any]) -> None:
        if time.monotonic() < self._paused_until:
            return
        try:
            self.stream.publish(self.run_id, event)
        except Exception:  # a lost stream relay must not fail the run: the database has everything
            self._paused_until = time.monotonic() + self._PAUSE_SECONDS
            logger.warning("could not publish %s for %s", event.get("message_type") or event.get("type"),
                           self.run_id, exc_info=True)  # fmt: skip

    def __call__(self, message_type: str, **payload: Any) -> None:
        self._publish({"message_type": message_type, "run_id": self.run_id, **payload})

    def chunk(self, chunk: StreamChunk, *, step_id: str, otid: str) -> None:
        if chunk.kind == "text":
            self("assistant_message", id=otid, step_id=step_id, content=chunk.text)
        elif chunk.kind == "reasoning":
            self("reasoning_message", id=otid, step_id=step_id, reasoning=chunk.text)
        elif chunk.kind == "tool_call":
            self(
                "tool_call_message",
                id=otid,
                step_id=step_id,
                tool_call={
                    "tool_call_id": chunk.tool_call_id,
                    "name": chunk.tool_name,
                    "arguments": chunk.arguments_delta,
                    "index": chunk.tool_call_index,
                },
            )

    def done(self) -> None:
        self._paused_until = 0.0  # always try to close the stream (readers also end it from the run's final row)
        self._publish({"type": DONE, "run_id": self.run_id})


# --- tools ------------------------------------------------------------------------------------


def _tool_message(*, call_id: str, status: str, func_response: Any, stdout=None, stderr=None) -> dict[str, Any]:
    return {
        "role": "tool",
        "tool_call_id": call_id,
        "tool_returns": [
            {
                "tool_call_id": call_id,
                "status": status,
                "func_response": func_response,
                "stdout": stdout or None,
                "stderr": stderr or None,
            }
        ],
        "is_err": status == "error",
    }


@dataclass
class _ToolsOutcome:
    messages: list[dict[str, Any]] = field(default_factory=list)
    duration_ns: int = 0
    needs_approval: list[dict[str, Any]] = field(default_factory=list)
    terminal: bool = False
    invalid: bool = False


def _run_tools(
    *, calls: list[dict[str, Any]], agent: Agent, run: Run, step: Step | None, publish: _Publisher,
    decisions: dict[str, Message] | None = None,
) -> _ToolsOutcome:  # fmt: skip
    """Execute tool calls in order; calls needing approval without a decision are set aside."""
    outcome = _ToolsOutcome()
    decisions = decisions or {}
    for call in calls:
        call_id, name, arguments = call["id"], call["function"]["name"], call["function"]["arguments"]
        registered: Tool | None = get_tool(name) if name in (agent.tools or []) else None
        if registered is None:
            outcome.invalid = True
            message = _tool_message(
                call_id=call_id, status="error", func_response=f"Tool {name!r} is not available to this agent."
            )
            outcome.messages.append(message)
            publish("tool_return_message", tool_call_id=call_id, status="error", tool_return=message["tool_returns"][0])
            continue
        decision = decisions.get(call_id)
        if registered.requires_approval and decision is None:
            outcome.needs_approval.append(call)
            continue
        if decision is not None and decision.name == DENIED:
            reason = " ".join(p.get("text", "") for p in decision.content or []).strip()
            message = _tool_message(
                call_id=call_id, status="error", func_response=f"Denied by the user{': ' + reason if reason else ''}."
            )
        else:
            with telemetry.tool_span(name=name, call_id=call_id, step=step, run=run, agent=agent) as span:
                result = execute_tool(name=name, arguments=arguments)
                if result.status == "error":
                    span.fail(error_type="tool_error", message=str(result.func_response))
            outcome.duration_ns += result.duration_ns
            message = _tool_message(
                call_id=call_id, status=result.status, func_response=result.func_response,
                stdout=result.stdout, stderr=result.stderr,
            )  # fmt: skip
            outcome.terminal |= registered.terminal and result.status == "success"
        outcome.messages.append(message)
        publish("tool_return_message", tool_call_id=call_id, status=message["tool_returns"][0]["status"],
                tool_return=message["tool_returns"][0])  # fmt: skip
    return outcome


# --- one LLM call -----------------------------------------------------------------------------


@dataclass
class _Call:
    result: LLMResult | None
    error: ProviderError | None
    trace: ProviderTraceIn | None
    llm_start_ns: int
    first_chunk_ns: int | None


def _call_provider(
    *, adapter: Any, request: LLMRequest, cancel: threading.Event, on_chunk: Callable[[StreamChunk], None]
) -> _Call:
    llm_start = time.time_ns()
    first_chunk = None
    call = adapter.stream(request, cancel_event=cancel)
    error: ProviderError | None = None
    result = None
    try:
        for chunk in call:
            if first_chunk is None:
                first_chunk = time.time_ns()
            on_chunk(chunk)
        result = call.result
    except ProviderError as exc:
        error = exc
    trace = getattr(call, "trace", None)
    trace_in = ProviderTraceIn(**asdict(trace)) if trace is not None else None
    return _Call(result, error, trace_in, llm_start, first_chunk)


def _assistant_message(result: LLMResult, otid: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": [part.model_dump(mode="json") for part in result.content],
        "tool_calls": [call.model_dump(mode="json") for call in result.tool_calls] or None,
        "otid": otid,
    }


def _stop_for_answer(*, result: LLMResult, agent: Agent) -> str | None:
    """The stop reason when the model made no tool call, or None to go on."""
    if result.finish_reason == "length":
        return StopReason.MAX_TOKENS_EXCEEDED
    if not result.content:
        return StopReason.INVALID_LLM_RESPONSE
    if "send_message" in (agent.tools or []):
        return StopReason.NO_TOOL_CALL  # such an agent answers through send_message
    return StopReason.END_TURN


# --- the run ----------------------------------------------------------------------------------


def run_usage(*, run: Run) -> dict[str, Any]:
    """Token and cost totals of a run's steps as the run API and stream report them (every attempt counts).

    A token count is None when no step reported it (the rule of every usage field, and what
    /v1/runs/{id}/usage says), else the sum of what the steps reported.
    """
    totals = run_usage_totals(run_id=run.pk)
    usage: dict[str, Any] = {name: totals[name] for name in USAGE_FIELDS}
    usage["cost_usd"] = float(totals["cost_usd"] or 0)
    usage["step_count"] = totals["steps"]
    return usage


def _backoff(attempt: int, error: ProviderError) -> float:
    base = settings.STEPLENS_LLM_RETRY_BASE_SECONDS * (2 ** (attempt - 1))
    if error.retry_after is not None:
        base = max(base, error.retry_after)
    return min(base, settings.STEPLENS_LLM_RETRY_MAX_SECONDS)


class _RunState:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.started_ns = time.time_ns()
        self.first_chunk_ns: int | None = None
        self.lease: str | None = None


def run_execute(*, run_id: str) -> Run:
    """Execute (or resume) a run until it stops; every step ends in a final state.

    Raises RunLeased when a live worker executes the run already (its heartbeat is fresh).
    """
    run = Run.objects.select_related("agent", "organization").get(pk=run_id)
    if run.is_finished:
        return run
    if run.cancel_requested_at is not None and run.lease is None:
        return _finish(run, RunStatus.CANCELLED, StopReason.CANCELLED, _Publisher(run), None)
    lease = new_lease()
    claimed = run_claim(run=run, lease=lease)
    if claimed is None and lease_holder_dead(run.lease):  # its process died on this machine: no need to wait
        claimed = run_claim(run=run, lease=lease, dead_lease=run.lease)
    if claimed is None:
        if run.is_finished:
            return run
        lost = run_lease_retry_in(run=run) <= 1 or lease_holder_dead(run.lease)
        if run.attempt >= settings.STEPLENS_RUN_MAX_ATTEMPTS and lost:
            return run_fail_lost(run=run)  # its last worker died too: nothing may resume it
        raise RunLeased(run.pk, retry_in=run_lease_retry_in(run=run))
    # A re-delivered run: the step in flight when the worker died will never finish; close it truthfully.
    steps_fail_pending(
        steps=Step.objects.filter(run=run),
        error_type="worker_lost",
        message="The worker running this step stopped before finishing it; the run was resumed.",
    )
    cancel = cancel_event_for(run.pk)
    publish = _Publisher(run)
    state = _RunState(run)
    state.lease = lease
    try:
        with (
            _CancelWatcher(run.pk, cancel, settings.STEPLENS_CANCEL_POLL_SECONDS, lease=lease),
            telemetry.run_span(run=run, agent=run.agent),
        ):
            status, stop_reason, error = _loop(run, cancel, publish, state)
    except Exception as exc:  # an unexpected bug still ends the run truthfully
        logger.exception("run %s failed", run.pk)
        _reconnect_if_broken()
        if run_holds_lease(run_id=run.pk, lease=lease):  # else the pending steps belong to the run's new worker
            steps_fail_pending(
                steps=Step.objects.filter(run=run), error_type="internal_error", message=str(exc), exc=exc,
                stop_reason=StopReason.ERROR,
            )  # fmt: skip
        status, stop_reason, error = (
            RunStatus.FAILED,
            StopReason.ERROR,
            {"error_type": "internal_error", "message": redact_text(str(exc)), "exception": type(exc).__name__},
        )
    finally:
        with _local_lock:
            _local_cancels.pop(run.pk, None)
    return _finish(run, status, stop_reason, publish, error, state)


def _reconnect_if_broken() -> None:
    """After a database restart the old connection is dead; drop it so the next query reconnects."""
    if connection.connection is not None and not connection.in_atomic_block and not connection.is_usable():
        connection.close()


def _finish(
    run: Run,
    status: RunStatus,
    stop_reason: str,
    publish: _Publisher,
    error: dict[str, Any] | None,
    state: _RunState | None = None,
) -> Run:
    ttft = state.first_chunk_ns - state.started_ns if state and state.first_chunk_ns else None
    duration = time.time_ns() - state.started_ns if state else None
    lease = state.lease if state else None
    run = run_finish(
        run=run, status=status, stop_reason=stop_reason, ttft_ns=ttft, total_duration_ns=duration, error_data=error,
        lease=lease,
    )  # fmt: skip
    if lease is not None and run.lease is not None:
        return run  # another worker took the run over (this one stalled past the lease): it ends the run
    for message_type, payload in run_end_events(run=run):
        publish(message_type, **payload)
    publish.done()
    return run


def run_end_events(*, run: Run) -> list[tuple[str, dict[str, Any]]]:
    """The events that close a run's stream, from its row: its error (if any), stop reason and usage.

    The loop publishes them when a run stops; the SSE relay sends them itself for a run that became final
    without them (its worker died, or the stream was lost).
    """
    events: list[tuple[str, dict[str, Any]]] = []
    if run.error is not None:
        events.append(
            ("error_message", {"error_type": run.error["type"], "message": run.error["message"], "error": run.error,
                               "detail": run.error_data})
        )  # fmt: skip
    events.append(("stop_reason", {"stop_reason": run.stop_reason}))
    events.append(("usage_statistics", run_usage(run=run)))
    return events


def _loop(run: Run, cancel: threading.Event, publish: _Publisher, state: _RunState):
    """Returns (run status, stop reason, error data or None)."""
    agent = run.agent
    adapter, provider_model = get_adapter(agent.model_handle)
    tool_specs = [
        ToolSpec(name=t.name, description=t.description, parameters=t.parameters)
        for t in (get_tool(name) for name in agent.tools or [])
        if t is not None
    ]

    # A paused or re-delivered run may have tool calls still to run (approved, denied or interrupted).
    history = _history(run)
    pending = _pending_tool_calls(history)
    if pending.calls:
        step = Step.objects.filter(pk=pending.step_id).first()
        outcome = _run_tools(
            calls=pending.calls, agent=agent, run=run, step=step, publish=publish, decisions=pending.decisions
        )
        if outcome.messages:
            messages_create(organization=run.organization, run=run, step=step, messages=outcome.messages)
        if outcome.needs_approval:
            return _request_approval(run, step, outcome.needs_approval, publish, pending.requested)
        if outcome.invalid:
            return RunStatus.COMPLETED, StopReason.INVALID_TOOL_CALL, None
        if outcome.terminal:
            return RunStatus.COMPLETED, StopReason.END_TURN, None

    steps_done = Step.objects.filter(run=run, status=StepStatus.SUCCESS).count()
    for step_number in range(steps_done + 1, agent.max_steps + 1):
        if cancel.is_set():
            return RunStatus.CANCELLED, StopReason.CANCELLED, None
        request = LLMRequest(
            model=provider_model,
            messages=_context(agent, _history(run)),
            tools=tool_specs,
            temperature=agent.temperature,
            max_output_tokens=agent.max_output_tokens,
        )
        ended = _step(run, agent, adapter, request, step_number, cancel, publish, state)
        if ended is not None:
            return ended
    return RunStatus.COMPLETED, StopReason.MAX_STEPS, None


def _step(run, agent, adapter, request, step_number, cancel, publish, state):
    """One step with its retries. Returns (status, stop_reason, error) when the run ends, else None."""
    max_attempts = settings.STEPLENS_LLM_MAX_ATTEMPTS
    # A resumed step continues the numbering of the attempts a lost worker left (they stay recorded).
    first = (Step.objects.filter(run=run, step_number=step_number).aggregate(last=Max("attempt"))["last"] or 0) + 1
    for attempt in range(first, first + max_attempts):
        step_start_ns = time.time_ns()
        with telemetry.chat_span(run=run, agent=agent, provider=adapter.provider_name,
                                 request_model=request.model, messages=request.messages) as chat:  # fmt: skip
            trace_id, span_id = telemetry.current_trace_ids()
            step = step_start(
                organization=run.organization,
                agent=agent,
                run=run,
                step_number=step_number,
                attempt=attempt,
                provider_name=adapter.provider_name,
                provider_category="base",
                model=request.model,
                model_handle=_stand_in_handle(adapter) or agent.model_handle,
                model_endpoint=getattr(adapter, "endpoint", None),
                metadata={"scripted_scenario": adapter.scenario.name} if hasattr(adapter, "scenario") else None,
                context_window_limit=agent.context_window,
                tags=agent.tags or [],
                trace_id=trace_id,
                span_id=span_id,
            )
            chat.bind_step(step)
            otid = f"otid-{uuid.uuid4()}"

            call_start = time.time_ns()

            def on_chunk(chunk: StreamChunk, _step=step, _chat=chat, _otid=otid, _start=call_start) -> None:
                publish.chunk(chunk, step_id=_step.pk, otid=_otid)  # the client first, then the bookkeeping
                if _step.progression < StepProgression.STREAM_RECEIVED:
                    now = time.time_ns()
                    step_progress(step=_step, progression=StepProgression.STREAM_RECEIVED)
                    _chat.first_chunk(now - _start)
                    if state.first_chunk_ns is None:
                        state.first_chunk_ns = now

            call = _call_provider(adapter=adapter, request=request, cancel=cancel, on_chunk=on_chunk)
            metrics = StepMetricsIn(
                step_start_ns=step_start_ns,
                llm_request_start_ns=call.llm_start_ns,
                llm_request_ns=(call.result.latency_ns if call.result else time.time_ns() - call.llm_start_ns),
                ttft_ns=call.result.ttft_ns if call.result else (
                    call.first_chunk_ns - call.llm_start_ns if call.first_chunk_ns else None),
            )  # fmt: skip

            if isinstance(call.error, ProviderCancelled) or (
                call.error is None and cancel.is_set() and not call.result
            ):
                chat.fail(error_type="cancelled", exc=call.error)
                metrics.step_ns = time.time_ns() - step_start_ns
                step_cancel(step=step, provider_trace=call.trace, metrics=metrics, usage=_partial_usage(call.error))
                return RunStatus.CANCELLED, StopReason.CANCELLED, None

            if call.error is not None:
                error = call.error
                chat.fail(error_type=error.error_type, exc=error)
                last = not error.retryable or attempt == first + max_attempts - 1
                metrics.step_ns = time.time_ns() - step_start_ns
                step_fail(
                    step=step,
                    error_type=error.error_type,
                    message=error.message,
                    exc=error,
                    details={**error.as_dict(), "attempt": attempt, "final_attempt": last},
                    stop_reason=StopReason.LLM_API_ERROR if last else None,
                    provider_trace=call.trace,
                    metrics=metrics,
                    usage=_partial_usage(error),
                )
                if last:
                    return RunStatus.FAILED, StopReason.LLM_API_ERROR, error.as_dict()
                publish("retry_message", step_id=step.pk, attempt=attempt, error_type=error.error_type,
                        message=error.message)  # fmt: skip
                if cancel.wait(_backoff(attempt - first + 1, error)):  # True when cancelled during the backoff
                    return RunStatus.CANCELLED, StopReason.CANCELLED, None
                continue

            result = call.result
            if result.tool_calls:  # tools may take a while: a crash meanwhile should show the response came
                step_progress(step=step, progression=StepProgression.RESPONSE_RECEIVED)
            chat.finish(result=result)
            messages = [_assistant_message(result, otid)]
            stop_reason = None
            approval_calls: list[dict[str, Any]] = []
            tool_ns = 0
            if result.tool_calls:
                outcome = _run_tools(
                    calls=[c.model_dump(mode="json") for c in result.tool_calls], agent=agent, run=run, step=step,
                    publish=publish,
                )  # fmt: skip
                messages += outcome.messages
                tool_ns = outcome.duration_ns
                approval_calls = outcome.needs_approval
                if outcome.invalid:
                    stop_reason = StopReason.INVALID_TOOL_CALL
                elif approval_calls:
                    stop_reason = StopReason.REQUIRES_APPROVAL
                elif outcome.terminal:
                    stop_reason = StopReason.END_TURN
                elif result.finish_reason == "length":
                    stop_reason = StopReason.MAX_TOKENS_EXCEEDED
            else:
                stop_reason = _stop_for_answer(result=result, agent=agent)
            if approval_calls:
                messages.append(_approval_request(approval_calls))
            metrics.tool_execution_ns = tool_ns
            metrics.step_ns = time.time_ns() - step_start_ns
            step_finish(
                step=step,
                usage=result.usage,
                finish_reason=result.finish_reason,
                stop_reason=stop_reason,
                response_id=result.response_id,
                metrics=metrics,
                messages=messages,
                provider_trace=call.trace,
                model=result.response_model or request.model,
            )
            if approval_calls:
                _publish_approval(publish, approval_calls, step)
                return RunStatus.PAUSED, StopReason.REQUIRES_APPROVAL, None
            if stop_reason is not None:
                return RunStatus.COMPLETED, stop_reason, None
            return None
    return None  # unreachable: the last attempt always returns


def _stand_in_handle(adapter: Any) -> str | None:
    """A scripted adapter records the model it stands in for, so costs and reports look real."""
    scenario = getattr(adapter, "scenario", None)
    return scenario.handle if scenario is not None else None


def _partial_usage(error: ProviderError | None) -> Usage | None:
    partial = getattr(error, "result", None)
    return partial.usage if partial is not None else None


def _approval_request(calls: list[dict[str, Any]]) -> dict[str, Any]:
    names = ", ".join(c["function"]["name"] for c in calls)
    return {
        "role": "approval",
        "name": APPROVAL_REQUEST,
        "tool_calls": calls,
        "content": [{"type": "text", "text": f"Approval required before running: {names}."}],
    }


def _publish_approval(publish: _Publisher, calls: list[dict[str, Any]], step: Step | None) -> None:
    for call in calls:
        publish(
            "approval_request_message",
            step_id=step.pk if step else None,
            tool_call={
                "tool_call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
            },
        )


def _request_approval(run, step, calls, publish, already_requested):
    fresh = [c for c in calls if c["id"] not in already_requested]
    if fresh:
        messages_create(organization=run.organization, run=run, step=step, messages=[_approval_request(fresh)])
    _publish_approval(publish, calls, step)
    return RunStatus.PAUSED, StopReason.REQUIRES_APPROVAL, None
