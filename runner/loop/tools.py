"""A step's tool calls: run in order, each with its span; a call that needs an approval without a decision is
set aside, a denied one is answered with the denial."""

from dataclasses import dataclass, field
from typing import Any

from agents.models import Agent, Run
from runner.conversation import DENIED
from runner.loop.events import Publisher
from runner.tools import Tool, execute_tool, get_tool
from steps.models import Message, Step
from traces import otel as telemetry


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
class ToolsOutcome:
    messages: list[dict[str, Any]] = field(default_factory=list)
    duration_ns: int = 0
    needs_approval: list[dict[str, Any]] = field(default_factory=list)
    terminal: bool = False
    invalid: bool = False


def run_tools(
    *, calls: list[dict[str, Any]], agent: Agent, run: Run, step: Step | None, publish: Publisher,
    decisions: dict[str, Message] | None = None,
) -> ToolsOutcome:  # fmt: skip
    """Execute tool calls in order; calls needing approval without a decision are set aside."""
    outcome = ToolsOutcome()
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
