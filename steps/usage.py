"""Normalized token usage: one shape for every provider API (see the usage table in DESIGN.md).

`None` means the provider did not report a count; `0` means it reported zero. `prompt_tokens`
includes cached and cache-write tokens; `completion_tokens` includes reasoning tokens.
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    # The provider's own usage objects, unchanged (stored in prompt/completion_tokens_details).
    prompt_tokens_details: dict[str, Any] | None = field(default=None, compare=False)
    completion_tokens_details: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def total_tokens(self) -> int | None:
        """prompt + completion; None only when neither side was reported."""
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    def as_counts(self) -> dict[str, int | None]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }
