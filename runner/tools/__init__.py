"""The tool registry: Python functions with JSON-schema arguments that agents may call."""

from runner.tools.registry import (
    Tool,
    ToolError,
    ToolOutcome,
    execute_tool,
    get_tool,
    registered_tools,
    tool,
    validate_tool_names,
)

# Importing the built-ins registers them.
from runner.tools import builtins  # noqa: F401  isort: skip

__all__ = [
    "Tool",
    "ToolError",
    "ToolOutcome",
    "execute_tool",
    "get_tool",
    "registered_tools",
    "tool",
    "validate_tool_names",
]
