"""Read-only views over a `MessageIn` history that every request builder shares.

A history can say the same thing several ways (tool calls as `tool_calls` or as `tool_call` content
parts; tool results as `tool_returns`, `tool_return` parts or a plain `tool_call_id` + text); these
helpers give builders one shape.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from runner.providers.images import ImageData, ImageFetcher, ImageFetchError
from steps.values import (
    ImageContent,
    MessageIn,
    TextContent,
    ToolCallContent,
    ToolReturnContent,
)


@dataclass(slots=True)
class ToolCallView:
    id: str
    name: str
    arguments: str  # JSON text
    input: dict[str, Any]
    signature: str | None = None


@dataclass(slots=True)
class ToolReturnView:
    tool_call_id: str
    is_error: bool
    parts: list[TextContent | ImageContent]


@dataclass(slots=True)
class ResolvedReturn:
    """A tool return whose images were turned into bytes; failed fetches became text and mark an error."""

    tool_call_id: str
    is_error: bool
    parts: list[TextContent | ImageData]

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.parts if isinstance(p, TextContent))

    @property
    def images(self) -> list[ImageData]:
        return [p for p in self.parts if isinstance(p, ImageData)]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def message_text(message: MessageIn) -> str:
    """All text parts of a message joined with newlines."""
    return "\n".join(part.text for part in message.content if isinstance(part, TextContent))


def parse_arguments(arguments: str | None) -> dict[str, Any]:
    """Tool-call arguments as a dict; invalid or non-object JSON gives {} (the raw text stays on the call)."""
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def assistant_tool_calls(message: MessageIn) -> list[ToolCallView]:
    """The calls of an assistant message: `tool_call` parts first, then `tool_calls` not already seen."""
    calls: list[ToolCallView] = []
    seen: set[str] = set()
    for part in message.content:
        if isinstance(part, ToolCallContent):
            seen.add(part.id)
            calls.append(
                ToolCallView(
                    id=part.id,
                    name=part.name,
                    arguments=json.dumps(part.input, ensure_ascii=False),
                    input=part.input,
                    signature=part.signature,
                )
            )
    for call in message.tool_calls or []:
        if call.id in seen:
            # Prefer the exact argument text the model produced over the re-serialized dict.
            for view in calls:
                if view.id == call.id:
                    view.arguments = call.function.arguments or view.arguments
            continue
        seen.add(call.id)
        calls.append(
            ToolCallView(
                id=call.id,
                name=call.function.name,
                arguments=call.function.arguments or "{}",
                input=parse_arguments(call.function.arguments),
            )
        )
    return calls


def _parts_of(value: Any) -> list[TextContent | ImageContent]:
    if value is None:
        return []
    if isinstance(value, str):
        return [TextContent(text=value)]
    return [p for p in value if isinstance(p, (TextContent, ImageContent))]


def tool_returns(message: MessageIn) -> list[ToolReturnView]:
    """The tool results a `tool` message carries, in order."""
    views: list[ToolReturnView] = []
    for ret in message.tool_returns or []:
        parts = _parts_of(ret.func_response)
        if not parts:
            lines = [*(ret.stdout or []), *(ret.stderr or [])]
            parts = [TextContent(text="\n".join(lines))]
        views.append(ToolReturnView(tool_call_id=ret.tool_call_id, is_error=ret.status == "error", parts=parts))
    if views:
        return views
    for part in message.content:
        if isinstance(part, ToolReturnContent):
            views.append(
                ToolReturnView(tool_call_id=part.tool_call_id, is_error=part.is_error, parts=_parts_of(part.content))
            )
    if views:
        return views
    if message.tool_call_id:
        parts = [p for p in message.content if isinstance(p, (TextContent, ImageContent))]
        views.append(ToolReturnView(tool_call_id=message.tool_call_id, is_error=message.is_err, parts=parts))
    return views


def resolve_return(view: ToolReturnView, fetcher: ImageFetcher) -> ResolvedReturn:
    """Fetch the images of a tool return; a failed fetch becomes an error text and marks the return failed."""
    parts: list[TextContent | ImageData] = []
    failed = False
    for part in view.parts:
        if isinstance(part, TextContent):
            parts.append(part)
            continue
        try:
            parts.append(fetcher.resolve(part))
        except ImageFetchError as exc:
            failed = True
            parts.append(TextContent(text=f"Error: the tool returned an image that could not be loaded. {exc}"))
    return ResolvedReturn(tool_call_id=view.tool_call_id, is_error=view.is_error or failed, parts=parts)


def tool_names_by_id(messages: list[MessageIn]) -> dict[str, str]:
    """Tool name for each call id in the history (Gemini answers a call by name, not id)."""
    names: dict[str, str] = {}
    for message in messages:
        if message.role == "assistant":
            for call in assistant_tool_calls(message):
                names[call.id] = call.name
    return names


def system_text(messages: list[MessageIn]) -> str | None:
    """The system messages' text joined, or None when there are none."""
    texts = [message_text(m) for m in messages if m.role == "system"]
    texts = [t for t in texts if t]
    return "\n\n".join(texts) if texts else None


def append_turn(turns: list[dict[str, Any]], *, role: str, items: list[dict[str, Any]], key: str) -> None:
    """Add a turn's items (Anthropic `content` blocks, Gemini `parts`), merged into the last turn of the
    same role: both APIs want roles to alternate."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})
