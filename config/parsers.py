"""The JSON parser of every API endpoint: standard JSON, minus what PostgreSQL cannot store.

PostgreSQL text and jsonb cannot hold the NUL character (U+0000), nor a lone surrogate (a JSON "\\udc00"
escape that pairs with nothing). A body carrying one anywhere (a message's content, a tag, a key) is a 400
naming where, before anything is written, rather than a database error halfway through a request.

Bodies over STEPLENS_API_MAX_BODY_BYTES are a 413 before they are read. Nesting is limited too (MAX_DEPTH
levels): no request of this API needs more, and Python's decoder and the checks that walk a body recurse, so a
body of 100,000 nested arrays would otherwise end in a RecursionError (a 500) instead of a 400.
"""

from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from config.errors import ApplicationError

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


def unstorable(text: str) -> str | None:
    """Why PostgreSQL could not store `text` (a NUL character, or a lone UTF-16 surrogate such as the JSON escape
    "\\udc00", which has no UTF-8 form), or None."""
    if "\x00" in text:
        return "NUL characters (\\u0000) are not allowed."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "Lone surrogate characters (\\ud800-\\udfff) are not allowed."
    return None


def unstorable_location(value: Any, path: str = "") -> tuple[str, str] | None:
    """(dotted path, reason) of the first string or key in `value` PostgreSQL could not store, or None."""
    if isinstance(value, str):
        reason = unstorable(value)
        return ((path or "body"), reason) if reason else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            reason = unstorable(key) if isinstance(key, str) else None
            found = (here, reason) if reason else unstorable_location(item, here)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unstorable_location(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH", "") if request is not None else ""
        limit = settings.STEPLENS_API_MAX_BODY_BYTES
        if str(declared).isdigit() and int(declared) > limit:
            # Refused before reading: a body is parsed whole, in memory.
            raise ApplicationError(f"The body is over the {limit}-byte limit.", status_code=413)
        too_deep = ParseError(f"JSON parse error - the body is nested deeper than {MAX_DEPTH} levels.")
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise too_deep from exc
        if depth_exceeds(data):
            raise too_deep
        found = unstorable_location(data)
        if found is not None:
            where, reason = found
            # The path is shown, so it must be printable itself.
            where = where.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")
            raise ParseError({where: [reason]})
        return data
