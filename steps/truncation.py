"""Cutting text and JSON values down to a byte budget, visibly: what is stored says that something was cut.

Used for OTLP attribute values (STEPLENS_OTLP_MAX_ATTRIBUTE_BYTES) and for what goes into a ProviderTrace's
request_json / response_json (STEPLENS_PROVIDER_TRACE_MAX_BYTES), whether the agent loop or the ingest wrote it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from config.parsers import depth_exceeds

# Below this many characters a string is not worth cutting further: the budget is spent on structure.
_MIN_STRING_CHARS = 64
# Deeper than this, a subtree is replaced by a marker when a value has to be cut (a recursion bound: JSON text
# can nest as deep as the parser's own limit, deeper than a Python walk over it can go).
_MAX_DEPTH = 64
TRUNCATED_KEY = "_steplens_truncated"


@dataclass(frozen=True, slots=True)
class Truncated:
    """A value cut to fit: the value to store, and the size in bytes it had (0 when nothing was cut)."""

    value: Any
    original_bytes: int = 0

    @property
    def cut(self) -> bool:
        return self.original_bytes > 0


def text_truncate(text: str, *, max_bytes: int) -> Truncated:
    """`text` cut to at most `max_bytes` UTF-8 bytes (on a character boundary) plus a marker saying how much went."""
    if len(text) <= max_bytes // 4:  # a UTF-8 character is at most 4 bytes: no need to encode to know
        return Truncated(text)
    encoded = text.encode("utf-8", errors="surrogatepass")
    if len(encoded) <= max_bytes:
        return Truncated(text)
    kept = encoded[:max_bytes].decode("utf-8", errors="ignore")
    gone = len(encoded) - len(kept.encode("utf-8", errors="surrogatepass"))
    return Truncated(f"{kept}…[truncated: {gone} of {len(encoded)} bytes cut]", len(encoded))


def _dumps(value: Any) -> str | None:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (RecursionError, ValueError):
        return None


def _size(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def _cut_strings(value: Any, chars: int, depth: int = 0) -> Any:
    """`value` with every string longer than `chars` characters cut (with a marker), subtrees deeper than
    _MAX_DEPTH replaced by a marker."""
    if isinstance(value, str):
        return value if len(value) <= chars else f"{value[:chars]}…[truncated: {len(value) - chars} chars cut]"
    if depth >= _MAX_DEPTH and isinstance(value, list | dict):
        return "…[truncated: nested too deeply]"
    if isinstance(value, list):
        return [_cut_strings(item, chars, depth + 1) for item in value]
    if isinstance(value, dict):
        return {str(key)[:chars]: _cut_strings(item, chars, depth + 1) for key, item in value.items()}
    return value


def json_depth_capped(value: Any) -> Any:
    """`value` itself when it nests less than _MAX_DEPTH lists and objects deep, else a copy whose deeper
    subtrees are replaced by "…[truncated: nested too deeply]": what recursive code (redaction, validation,
    serializers) can walk safely."""
    if not isinstance(value, list | dict) or not depth_exceeds(value, limit=_MAX_DEPTH):
        return value
    return _cut_strings(value, chars=2**62)


def json_truncate(value: Any, *, max_bytes: int) -> Truncated:
    """A JSON value whose serialization fits in `max_bytes` (UTF-8), cut visibly when the original does not.

    The long strings are cut first (each keeps its beginning and ends with "…[truncated: N chars cut]"), so the
    structure stays readable; when even short strings do not fit, the value becomes
    {"_steplens_truncated": {"original_bytes": N}, "preview": <the beginning of its JSON text>}. Always valid JSON.
    """
    if value is None:
        return Truncated(None)
    text = _dumps(value)
    if text is not None and (len(text) <= max_bytes // 4 or _size(text) <= max_bytes):
        return Truncated(value)
    original = _size(text) if text is not None else 0
    # What the structure costs with every string at its shortest: over the budget, only a preview can fit.
    skeleton = _dumps(_cut_strings(value, _MIN_STRING_CHARS))
    chars = max_bytes - _size(skeleton) if skeleton is not None else 0
    while chars >= _MIN_STRING_CHARS:
        candidate = _cut_strings(value, chars)
        candidate_text = _dumps(candidate)
        if candidate_text is not None and _size(candidate_text) <= max_bytes:
            return Truncated(candidate, original or _size(candidate_text))
        chars //= 2
    preview_text = text if text is not None else (_dumps(_cut_strings(value, _MIN_STRING_CHARS)) or "")
    room = max_bytes
    while True:
        room //= 2  # the preview is JSON text inside a JSON string: escaping can double it
        preview = text_truncate(preview_text, max_bytes=room).value
        marker = {TRUNCATED_KEY: {"original_bytes": original}, "preview": preview}
        if room < _MIN_STRING_CHARS or _size(json.dumps(marker, ensure_ascii=False)) <= max_bytes:
            if room < _MIN_STRING_CHARS:
                marker["preview"] = ""
            return Truncated(marker, original or _size(preview_text))
