"""The agent loop: one run, step by step, recorded through the step services.

Per step: build the context from the run's messages, stream the provider's answer (publishing chunks
to the run's stream), record the step with its usage, cost, metrics, provider trace and messages,
run the tool calls, and decide whether to go on. A run re-delivered after a worker died resumes
after its last finished step; the step that was in flight is failed as `worker_lost`.

By concern: `lifecycle` (a run from claim to finish; dispatch and cancel), `step` (one step and its retries),
`tools` (a step's tool calls), `cancellation` (cancel events, the watcher and the lease heartbeat) and `events`
(what the run's stream receives).
"""

from runner.conversation import APPROVAL_REQUEST, APPROVED, DENIED, pending_tool_calls
from runner.loop.cancellation import cancel_event_for, signal_cancel
from runner.loop.events import run_end_events, run_usage
from runner.loop.lifecycle import run_cancel, run_dispatch, run_execute

__all__ = [
    "APPROVAL_REQUEST",
    "APPROVED",
    "DENIED",
    "cancel_event_for",
    "pending_tool_calls",
    "run_cancel",
    "run_dispatch",
    "run_end_events",
    "run_execute",
    "run_usage",
    "signal_cancel",
]
