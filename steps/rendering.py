"""Message rows rendered as the typed message union (Letta style) that every API returns.

One stored message can become several typed messages: an assistant turn with reasoning, text and
two tool calls renders as a reasoning_message, an assistant_message and two tool_call_messages, in
that order, all carrying the stored message's id, date, step, run and sequence.

Approval messages follow the agent loop: role "approval" with tool_calls is a request; role
"approval" named "approved"/"denied" with a tool_call_id is the human's response.
"""

import json
from collections.abc import Iterable
from typing import Any

from steps.models import Message

MESSAGE_TYPES = (
    "system_message",
    "user_message",
    "assistant_message",
    "reasoning_message",
    "hidden_reasoning_message",
    "tool_call_message",
    "tool_return_message",
    "approval_request_message",
    "approval_response_message",
)

_APPROVED, _DENIED = "approved", "denied"


def _text_of(parts: list[dict[str, Any]]) -> str:
    return "".join(p.get("text", "") for p in parts if p.get("type") == "text")


def _user_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Plain text stays a string; text mixed with images stays a list of parts."""
    if all(p.get("type") == "text" for p in parts):
        return _text_of(parts)
    return [p for p in parts if p.get("type") in {"text", "image"}]


def _tool_call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {"name": name, "arguments": arguments, "tool_call_id": call_id}


def _tool_calls_of(message: Message) -> list[dict[str, Any]]:
    calls = [
        _tool_call(c.get("id", ""), c.get("function", {}).get("name", ""), c.get("function", {}).get("arguments", ""))
        for c in message.tool_calls or []
    ]
    known = {c["tool_call_id"] for c in calls}
    for part in message.content or []:
        if part.get("type") == "tool_call" and part.get("id") not in known:
            calls.append(_tool_call(part.get("id", ""), part.get("name", ""), part.get("input", {})))
    return calls


def _assistant(message: Message) -> list[tuple[str, dict[str, Any]]]:
    items: list[tuple[str, dict[str, Any]]] = []
    text: list[str] = []
    for part in message.content or []:
        kind = part.get("type")
        if kind == "reasoning":
            items.append(
                (
                    "reasoning_message",
                    {"reasoning": part.get("reasoning", ""), "signature": part.get("signature"), "source": "model"},
                )
            )
        elif kind == "summarized_reasoning":
            summary = "\n\n".join(s.get("text", "") for s in part.get("summary", []))
            items.append(("reasoning_message", {"reasoning": summary, "signature": None, "source": "summary"}))
        elif kind == "redacted_reasoning":
            items.append(("hidden_reasoning_message", {"state": "redacted", "hidden_reasoning": part.get("data")}))
        elif kind == "omitted_reasoning":
            items.append(("hidden_reasoning_message", {"state": "omitted", "hidden_reasoning": None}))
        elif kind == "text":
            text.append(part.get("text", ""))
    if text:
        items.append(("assistant_message", {"content": "".join(text)}))
    items.extend(("tool_call_message", {"tool_call": call}) for call in _tool_calls_of(message))
    return items


def _tool(message: Message) -> list[tuple[str, dict[str, Any]]]:
    returns = message.tool_returns or []
    if returns:
        return [
            (
                "tool_return_message",
                {
                    "tool_return": {
                        "tool_call_id": r.get("tool_call_id"),
                        "status": r.get("status"),
                        "func_response": r.get("func_response"),
                        "stdout": r.get("stdout"),
                        "stderr": r.get("stderr"),
                    }
                },
            )
            for r in returns
        ]
    items = []
    for part in message.content or []:
        if part.get("type") == "tool_return":
            items.append(
                (
                    "tool_return_message",
                    {
                        "tool_return": {
                            "tool_call_id": part.get("tool_call_id"),
                            "status": "error" if part.get("is_error") else "success",
                            "func_response": part.get("content"),
                            "stdout": None,
                            "stderr": None,
                        }
                    },
                )
            )
    if not items:
        items.append(
            (
                "tool_return_message",
                {
                    "tool_return": {
                        "tool_call_id": message.tool_call_id,
                        "status": "error" if message.is_err else "success",
                        "func_response": _text_of(message.content or []),
                        "stdout": None,
                        "stderr": None,
                    }
                },
            )
        )
    return items


def _approval(message: Message) -> list[tuple[str, dict[str, Any]]]:
    calls = _tool_calls_of(message)
    if calls:
        return [("approval_request_message", {"tool_call": call}) for call in calls]
    approve = None if message.name not in {_APPROVED, _DENIED} else message.name == _APPROVED
    reason = _text_of(message.content or []) or None
    return [("approval_response_message", {"approve": approve, "tool_call_id": message.tool_call_id, "reason": reason})]


def render_message(message: Message) -> list[dict[str, Any]]:
    """One stored message as one or more typed messages."""
    role = message.role
    if role == "system":
        items = [("system_message", {"content": _text_of(message.content or [])})]
    elif role == "user":
        items = [("user_message", {"content": _user_content(message.content or [])})]
    elif role == "assistant":
        items = _assistant(message)
    elif role == "tool":
        items = _tool(message)
    elif role == "approval":
        items = _approval(message)
    else:  # a role added later renders as its text rather than disappearing
        items = [("assistant_message", {"content": _text_of(message.content or [])})]
    common = {
        "id": message.id,
        "date": message.created_at.isoformat() if message.created_at else None,
        "step_id": message.step_id,
        "run_id": message.run_id,
        "sequence": message.sequence_id,
        "otid": message.otid,
        "name": message.name,
        "is_err": message.is_err,
    }
    return [{**common, "message_type": kind, **fields} for kind, fields in items]


def render_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Messages (in the order given, normally sequence order) as the typed message union."""
    rendered: list[dict[str, Any]] = []
    for message in messages:
        rendered.extend(render_message(message))
    return rendered
