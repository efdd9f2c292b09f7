"""The JSON parser of every API endpoint: standard JSON, minus what PostgreSQL cannot store.

PostgreSQL text and jsonb cannot hold the NUL character (U+0000). A body carrying one anywhere (a
message's content, a tag, a key) is a 400 naming where, before anything is written, rather than a
database error halfway through a request.
"""

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


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
        data = super().parse(stream, media_type, parser_context)
        where = nul_location(data)
        if where is not None:
            raise ParseError({where.replace("\x00", "\\u0000"): ["NUL characters (\\u0000) are not allowed."]})
        return data
