"""Secret redaction for anything that is stored or logged (provider traces, error details, spans).

`redact(obj)` returns a copy of a JSON-like structure in which

- every value under a key that names a secret (api key, authorization, secret, password, credential,
  cookie, a `token` holding text) is replaced by `REDACTED`, and
- every string that looks like a provider credential (``sk-…``, ``sk-ant-…``, ``AIza…``, ``Bearer …``)
  has that part replaced, wherever it appears.

Token *counts* are kept: a key containing "token" is only redacted when its value is not a number,
so `input_tokens`, `max_tokens` or `thoughtsTokenCount` survive while `access_token: "…"` does not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

# Words that make a key secret whatever its value is.
_SECRET_WORDS = frozenset(
    {
        "authorization",
        "auth",
        "password",
        "passwd",
        "passphrase",
        "secret",
        "secrets",
        "apikey",
        "credential",
        "credentials",
        "cookie",
        "key",
    }
)
# Words that make a key secret only when the value is text (counts are not secrets).
_TOKEN_WORDS = frozenset({"token", "tokens"})

_SECRET_VALUE = re.compile(
    r"\b(?:sk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}"
    r"|AIza[0-9A-Za-z_\-]{30,}"
    r"|(?:Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]{8,})"
)

_key_cache: dict[str, tuple[bool, bool]] = {}


def _classify_key(key: str) -> tuple[bool, bool]:
    """(always secret, secret when the value is text) for a mapping key."""
    cached = _key_cache.get(key)
    if cached is not None:
        return cached
    words = set(_WORD_SPLIT.split(_CAMEL.sub("_", key).lower()))
    words.discard("")
    result = (bool(words & _SECRET_WORDS), bool(words & _TOKEN_WORDS))
    if len(_key_cache) < 10_000:
        _key_cache[key] = result
    return result


def is_secret_key(key: str) -> bool:
    """True when a key (header or field name) always carries a secret, e.g. `x-api-key`, `Authorization`."""
    return _classify_key(key)[0]


def redact_text(text: str) -> str:
    """Replace credential-looking substrings (API keys, bearer tokens) in free text."""
    # Fast path for long texts (messages, prompts): the pattern is case-sensitive and every match contains one of
    # these literals, so without them the regex cannot match. ("basic" in prose no longer sends text to the regex.)
    if not text or ("sk-" not in text and "AIza" not in text and "Bearer" not in text and "Basic" not in text):
        return text
    return _SECRET_VALUE.sub(REDACTED, text)


def _redact_scalar_under_secret(value: Any) -> Any:
    if value is None or value == "" or isinstance(value, bool):
        return value
    return REDACTED


def redact(obj: Any) -> Any:
    """A redacted deep copy of `obj` (dicts, lists, tuples, strings, numbers); other objects are kept.

    Containers under a secret key are walked rather than dropped, so a JSON schema property named
    `api_key` keeps its shape while a string value under it does not.
    """
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        is_logprob = "logprob" in obj  # a logprobs entry's `token` is generated text, not a secret
        for key, value in obj.items():
            if isinstance(key, str) and not isinstance(value, (Mapping, list, tuple)):
                always, textual = _classify_key(key)
                if always or (textual and not is_logprob and not isinstance(value, (int, float))):
                    out[key] = _redact_scalar_under_secret(value)
                    continue
            out[key] = redact(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(item) for item in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers with secret-bearing ones (Authorization, x-api-key, x-goog-api-key, cookies) redacted."""
    return {k: (REDACTED if is_secret_key(k) else redact_text(v)) for k, v in headers.items()}
