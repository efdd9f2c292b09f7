"""A run's conversation as stored: its messages in order, and the tool calls still waiting for a return or for
an approval. Both the run services (recording a decision) and the loop (resuming) read it, so it sits below both."""

from dataclasses import dataclass, field
from typing import Any

from agents.models import Run
from steps.models import Message

APPROVAL_REQUEST = "approval_request"
APPROVED = "approved"
DENIED = "denied"


def run_history(*, run: Run) -> list[Message]:
    """The run's messages in sequence order."""
    return list(Message.objects.filter(run=run).order_by("sequence_id"))


@dataclass
class PendingToolCalls:
    """Tool calls of the last assistant message that have no tool return yet."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    decisions: dict[str, Message] = field(default_factory=dict)  # tool_call_id -> approval response
    requested: set[str] = field(default_factory=set)  # tool_call_ids with an approval request
    step_id: str | None = None


def _pending_tool_calls(history: list[Message]) -> PendingToolCalls:
    pending = PendingToolCalls()
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


def pending_tool_calls(*, run: Run) -> PendingToolCalls:
    """The run's tool calls still to be run, with approval requests and decisions made so far."""
    return _pending_tool_calls(run_history(run=run))


def approval_request_message(calls: list[dict[str, Any]]) -> dict[str, Any]:
    names = ", ".join(c["function"]["name"] for c in calls)
    return {
        "role": "approval",
        "name": APPROVAL_REQUEST,
        "tool_calls": calls,
        "content": [{"type": "text", "text": f"Approval required before running: {names}."}],
    }
