"""The JSON parser of every API endpoint: standard JSON, minus what PostgreSQL cannot store.

PostgreSQL text and jsonb cannot hold the NUL character (U+0000). A body carrying one anywhere (a
message's content, a tag, a key) is a 400 naming where, before anything is written, rather than a
database error halfway through a request.

Nesting is limited too (MAX_DEPTH levels): no request of this API needs more, and Python's decoder and the
checks that walk a body recurse, so a body of 100,000 nested arrays would otherwise end in a RecursionError (a
500) instead of a 400.
"""

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_DEPTH = 64


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in `value` nest deeper than `limit` levels (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def nul_location(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or key) in `value` holding a NUL character, or None."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return here
            found = nul_location(item, here)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_location(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        too_deep = ParseError(f"JSON parse error - the body is nested deeper than {MAX_DEPTH} levels.")
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise too_deep from exc
        if depth_exceeds(data):
            raise too_deep
        where = nul_location(data)
        if where is not None:
            raise ParseError({where.replace("\x00", "\\u0000"): ["NUL characters (\\u0000) are not allowed."]})
        return data
