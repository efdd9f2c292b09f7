"""What a run tells its stream: chunks as they arrive, tool returns, approval requests, and the events that
close the stream (its error, stop reason and usage)."""

import logging
import time
from typing import Any

from agents.models import Run
from runner.providers import StreamChunk
from runner.streams import DONE, get_run_stream
from steps.models import Step
from steps.selectors import USAGE_FIELDS, run_usage_totals

logger = logging.getLogger(__name__)


class Publisher:
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


def publish_approval(publish: Publisher, calls: list[dict[str, Any]], step: Step | None) -> None:
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
