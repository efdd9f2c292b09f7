"""Registering tools and executing one tool call with validated arguments."""

import contextlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from config.errors import ApplicationError


class ToolError(Exception):
    """Raised by a tool to report a failure the model should see (not a crash)."""


@dataclass(frozen=True)
class Tool:
    """A callable tool: its schema, whether it needs a human's approval, whether calling it ends the turn."""

    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any]
    requires_approval: bool = False
    terminal: bool = False  # e.g. send_message: the agent has answered


@dataclass
class ToolOutcome:
    """What running one tool call produced: a string or text/image parts, plus captured output."""

    status: str  # "success" | "error"
    func_response: str | list[dict[str, Any]]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    duration_ns: int = 0


_REGISTRY: dict[str, Tool] = {}


def tool(
    *, name: str, description: str, parameters: dict[str, Any], requires_approval: bool = False, terminal: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as a tool."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        jsonschema.Draft202012Validator.check_schema(parameters)
        _REGISTRY[name] = Tool(name, description, parameters, function, requires_approval, terminal)
        return function

    return register


def registered_tools() -> dict[str, Tool]:
    return dict(_REGISTRY)


def get_tool(name: str) -> Tool | None:
    return _REGISTRY.get(name)


def validate_tool_names(names: list[str]) -> list[str]:
    """The names, if every one is registered; otherwise a 400 naming the unknown ones."""
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise ApplicationError(
            "Unknown tools.", extra={"tools": f"not in the tool registry: {unknown}; known: {sorted(_REGISTRY)}"}
        )
    return names


def _error(message: str, started: int) -> ToolOutcome:
    return ToolOutcome(status="error", func_response=message, duration_ns=time.perf_counter_ns() - started)


def execute_tool(*, name: str, arguments: str) -> ToolOutcome:
    """Run one tool call. Unknown tools, bad JSON, schema violations and tool exceptions become error outcomes."""
    started = time.perf_counter_ns()
    registered = _REGISTRY.get(name)
    if registered is None:
        return _error(f"Unknown tool {name!r}.", started)
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError as exc:
        return _error(f"Arguments are not valid JSON: {exc}", started)
    if not isinstance(args, dict):
        return _error("Arguments must be a JSON object.", started)
    try:
        jsonschema.validate(args, registered.parameters)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "(arguments)"
        return _error(f"Invalid arguments at {where}: {exc.message}", started)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            value = registered.function(**args)
        status = "success"
    except ToolError as exc:
        value, status = str(exc), "error"
    except Exception as exc:  # a broken tool must not break the run: the model sees the error
        value, status = f"{type(exc).__name__}: {exc}", "error"
    if not isinstance(value, str | list):
        value = json.dumps(value, default=str)
    return ToolOutcome(
        status=status,
        func_response=value,
        stdout=stdout.getvalue().splitlines(),
        stderr=stderr.getvalue().splitlines(),
        duration_ns=time.perf_counter_ns() - started,
    )
