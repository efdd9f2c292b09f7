"""One step of a run: one LLM call (with its retries), recorded through the step services with its usage,
cost, metrics, provider trace and messages; then the tool calls it asked for."""

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Max

from agents.models import Agent, Run, RunStatus, StopReason
from config.logging_setup import log_context
from config.metrics import provider_call_record
from runner.conversation import approval_request_message
from runner.loop.events import Publisher, publish_approval
from runner.loop.tools import run_tools
from runner.providers import (
    CancelEvent,
    LLMRequest,
    LLMResult,
    ProviderAdapter,
    ProviderCancelled,
    ProviderError,
    StreamChunk,
)
from steps.models import Message, Step, StepProgression
from steps.provider_traces import ProviderTraceIn
from steps.services import StepMetricsIn, step_cancel, step_fail, step_finish, step_progress, step_start
from steps.values import MessageIn, Usage
from traces import otel as telemetry


@dataclass
class RunState:
    """What a run keeps across its steps: when it started and its first chunk came (its TTFT), and its lease."""

    started_ns: int = field(default_factory=time.time_ns)
    first_chunk_ns: int | None = None
    lease: str | None = None


@dataclass(frozen=True)
class Outcome:
    """Where a step (or the run's resumed tool calls) left the run: going on (no status), or stopped."""

    status: RunStatus | None = None
    stop_reason: str | None = None
    error: dict[str, Any] | None = None

    @property
    def ended(self) -> bool:
        return self.status is not None


GO_ON = Outcome()
CANCELLED = Outcome(RunStatus.CANCELLED, StopReason.CANCELLED)


@dataclass(frozen=True)
class StepInput:
    """Everything one step needs: whose step it is, what to ask which provider, and the run's cancel event,
    stream and state."""

    run: Run
    agent: Agent
    adapter: ProviderAdapter
    request: LLMRequest
    step_number: int
    cancel: CancelEvent
    publish: Publisher
    state: RunState


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


def llm_context(*, agent: Agent, history: list[Message]) -> list[MessageIn]:
    """What the model sees: the system prompt and the run's conversation (approval bookkeeping left out)."""
    messages = [MessageIn(role="system", content=[{"type": "text", "text": agent.system}])] if agent.system else []
    messages += [_as_message_in(m) for m in history if m.role != "approval"]
    return messages


@dataclass
class _Call:
    result: LLMResult | None
    error: ProviderError | None
    trace: ProviderTraceIn | None
    llm_start_ns: int
    first_chunk_ns: int | None


def _call_provider(
    *, adapter: ProviderAdapter, request: LLMRequest, cancel: CancelEvent, on_chunk: Callable[[StreamChunk], None]
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
    provider_call_record(
        provider=adapter.provider_name,
        model=request.model,
        error_type=error.error_type if error is not None else None,
        duration_s=(time.time_ns() - llm_start) / 1e9,
    )
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


def _backoff(attempt: int, error: ProviderError) -> float:
    base = settings.STEPLENS_LLM_RETRY_BASE_SECONDS * (2 ** (attempt - 1))
    if error.retry_after is not None:
        base = max(base, error.retry_after)
    return min(base, settings.STEPLENS_LLM_RETRY_MAX_SECONDS)


def run_step(inputs: StepInput) -> Outcome:
    """One step with its retries: how the run ends, or GO_ON when the run goes on to its next step."""
    run, cancel = inputs.run, inputs.cancel
    max_attempts = settings.STEPLENS_LLM_MAX_ATTEMPTS
    # A resumed step continues the numbering of the attempts a lost worker left (they stay recorded).
    first = (
        Step.objects.filter(run=run, step_number=inputs.step_number).aggregate(last=Max("attempt"))["last"] or 0
    ) + 1
    for attempt in range(first, first + max_attempts):
        step_start_ns = time.time_ns()
        with telemetry.chat_span(
            run=run, agent=inputs.agent, provider=inputs.adapter.provider_name, request_model=inputs.request.model,
            messages=inputs.request.messages,
        ) as chat:  # fmt: skip
            step = _start_attempt(inputs, attempt=attempt, chat=chat)
            with log_context(step_id=step.pk):  # every log line of this attempt names its step
                otid = f"otid-{uuid.uuid4()}"
                call = _stream_answer(inputs, step=step, chat=chat, otid=otid)
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
                    return CANCELLED

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
                        return Outcome(RunStatus.FAILED, StopReason.LLM_API_ERROR, error.as_dict())
                    inputs.publish("retry_message", step_id=step.pk, attempt=attempt, error_type=error.error_type,
                                   message=error.message)  # fmt: skip
                    if cancel.wait(_backoff(attempt - first + 1, error)):  # True when cancelled during the backoff
                        return CANCELLED
                    continue

                return _record_answer(inputs, step=step, chat=chat, otid=otid, call=call, metrics=metrics,
                                      step_start_ns=step_start_ns)  # fmt: skip
    return GO_ON  # unreachable: the last attempt always returns


def _start_attempt(inputs: StepInput, *, attempt: int, chat: telemetry.ChatSpan) -> Step:
    """Record the attempt's step as started, inside its chat span (whose trace and span ids it stores)."""
    run, agent, adapter, request = inputs.run, inputs.agent, inputs.adapter, inputs.request
    trace_id, span_id = telemetry.current_trace_ids()
    step = step_start(
        organization=run.organization,
        agent=agent,
        run=run,
        step_number=inputs.step_number,
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
    return step


def _stream_answer(inputs: StepInput, *, step: Step, chat: telemetry.ChatSpan, otid: str) -> _Call:
    """Call the provider, relaying each chunk to the run's stream; the first chunk marks the step and the run."""
    publish, state = inputs.publish, inputs.state
    call_start = time.time_ns()

    def on_chunk(chunk: StreamChunk) -> None:
        publish.chunk(chunk, step_id=step.pk, otid=otid)  # the client first, then the bookkeeping
        if step.progression < StepProgression.STREAM_RECEIVED:
            now = time.time_ns()
            step_progress(step=step, progression=StepProgression.STREAM_RECEIVED)
            chat.first_chunk(now - call_start)
            if state.first_chunk_ns is None:
                state.first_chunk_ns = now

    return _call_provider(adapter=inputs.adapter, request=inputs.request, cancel=inputs.cancel, on_chunk=on_chunk)


def _record_answer(
    inputs: StepInput,
    *,
    step: Step,
    chat: telemetry.ChatSpan,
    otid: str,
    call: _Call,
    metrics: StepMetricsIn,
    step_start_ns: int,
) -> Outcome:
    """A successful call: run its tool calls, record the step with its messages, and say whether the run stops."""
    agent, publish = inputs.agent, inputs.publish
    result = call.result
    if result.tool_calls:  # tools may take a while: a crash meanwhile should show the response came
        step_progress(step=step, progression=StepProgression.RESPONSE_RECEIVED)
    chat.finish(result=result)
    messages = [_assistant_message(result, otid)]
    stop_reason = None
    approval_calls: list[dict[str, Any]] = []
    tool_ns = 0
    if result.tool_calls:
        outcome = run_tools(
            calls=[c.model_dump(mode="json") for c in result.tool_calls], agent=agent, run=inputs.run, step=step,
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
        messages.append(approval_request_message(approval_calls))
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
        model=result.response_model or inputs.request.model,
    )
    if approval_calls:
        publish_approval(publish, approval_calls, step)
        return Outcome(RunStatus.PAUSED, StopReason.REQUIRES_APPROVAL)
    if stop_reason is not None:
        return Outcome(RunStatus.COMPLETED, stop_reason)
    return GO_ON


def _stand_in_handle(adapter: Any) -> str | None:
    """A scripted adapter records the model it stands in for, so costs and reports look real."""
    scenario = getattr(adapter, "scenario", None)
    return scenario.handle if scenario is not None else None


def _partial_usage(error: ProviderError | None) -> Usage | None:
    partial = getattr(error, "result", None)
    return partial.usage if partial is not None else None
