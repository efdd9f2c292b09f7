"""Cost of a step in USD, from the genai-prices price table.

Cached input, cache writes and output (reasoning included, which providers bill as output) are each
priced at their own rate. A model the table does not know gives no cost and a reason, never 0.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

from steps.usage import Usage

# Steplens provider names -> genai-prices provider ids (where they differ).
_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "google": "google", "gemini": "google"}


@dataclass(frozen=True, slots=True)
class Cost:
    usd: Decimal | None
    detail: str  # empty when priced; otherwise why there is no price


@lru_cache(maxsize=1024)
def _price(
    provider: str | None,
    model: str,
    input_tokens: int,
    cache_read: int,
    cache_write: int,
    output_tokens: int,
    when: datetime | None,
) -> Cost:
    usage = PriceUsage(
        input_tokens=input_tokens,
        cache_read_tokens=cache_read or None,
        cache_write_tokens=cache_write or None,
        output_tokens=output_tokens,
    )
    provider_id = _PROVIDER_IDS.get((provider or "").lower()) if provider else None
    try:
        calculation = calc_price(usage, model_ref=model, provider_id=provider_id, genai_request_timestamp=when)
    except LookupError:
        if provider_id is None:
            return Cost(None, f"unknown model {model!r}: not in the price table")
        return Cost(None, f"unknown model {model!r} for provider {provider!r}: not in the price table")
    return Cost(Decimal(calculation.total_price).quantize(Decimal("1e-10")), "")


def step_cost(*, provider: str | None, model: str | None, usage: Usage, when: datetime | None = None) -> Cost:
    """The USD cost of one call, or `Cost(None, reason)` when it cannot be priced."""
    if not model:
        return Cost(None, "no model recorded")
    if usage.prompt_tokens is None and usage.completion_tokens is None:
        return Cost(None, "provider reported no usage")
    # Prices change rarely; bucketing the timestamp by day keeps the cache useful.
    day = when.replace(hour=0, minute=0, second=0, microsecond=0) if when else None
    return _price(
        provider,
        model,
        usage.prompt_tokens or 0,
        usage.cached_input_tokens or 0,
        usage.cache_write_tokens or 0,
        usage.completion_tokens or 0,
        day,
    )
