"""Built-in tools. `send_message` answers the user; `render_chart` returns an image; `issue_refund` needs approval."""

import ast
import base64
import hashlib
import operator
from datetime import UTC, datetime

from runner.tools.png import bar_chart
from runner.tools.registry import ToolError, tool


@tool(
    name="send_message",
    description="Send a message to the user. Calling it ends your turn.",
    parameters={
        "type": "object",
        "properties": {"message": {"type": "string", "description": "The message to show the user."}},
        "required": ["message"],
        "additionalProperties": False,
    },
    terminal=True,
)
def send_message(*, message: str) -> str:
    return "Sent message successfully."


@tool(
    name="get_weather",
    description="Current weather for a city (a deterministic simulation: same city, same answer).",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "minLength": 1}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
def get_weather(*, city: str) -> str:
    digest = hashlib.sha256(city.strip().lower().encode()).digest()
    conditions = ["sunny", "cloudy", "rainy", "windy", "snowy"][digest[0] % 5]
    return f"{city}: {digest[1] % 35 - 5} °C, {conditions}, humidity {digest[2] % 60 + 30}%"


_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        if isinstance(node.op, ast.Pow) and abs(_evaluate(node.right)) > 100:
            raise ToolError("Exponent too large.")
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ToolError(f"Unsupported expression element: {type(node).__name__}")


@tool(
    name="calculator",
    description="Evaluate an arithmetic expression (+ - * / % ** and parentheses).",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string", "maxLength": 200}},
        "required": ["expression"],
        "additionalProperties": False,
    },
)
def calculator(*, expression: str) -> str:
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"Not an arithmetic expression: {exc.msg}") from exc
    try:
        return str(_evaluate(tree.body))
    except ZeroDivisionError as exc:
        raise ToolError("Division by zero.") from exc


@tool(
    name="current_time",
    description="The current UTC time in ISO 8601.",
    parameters={"type": "object", "properties": {}, "additionalProperties": False},
)
def current_time() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@tool(
    name="render_chart",
    description="Render a bar chart of numbers and return it as a PNG image.",
    parameters={
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "values": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 50},
        },
        "required": ["values"],
        "additionalProperties": False,
    },
)
def render_chart(*, values: list[float], title: str = "Chart") -> list[dict]:
    data = base64.b64encode(bar_chart(values=values)).decode()
    return [
        {"type": "text", "text": f"{title}: bar chart of {len(values)} values (max {max(values)})."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
    ]


@tool(
    name="issue_refund",
    description="Refund an order. A human must approve every refund before it happens.",
    parameters={
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "minLength": 1},
            "amount": {"type": "number", "exclusiveMinimum": 0},
            "reason": {"type": "string"},
        },
        "required": ["order_id", "amount"],
        "additionalProperties": False,
    },
    requires_approval=True,
)
def issue_refund(*, order_id: str, amount: float, reason: str = "") -> str:
    return f"Refunded {amount:.2f} for order {order_id}."
