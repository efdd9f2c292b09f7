"""Cost of a step in USD, from the genai-prices price table.

Cached input, cache writes and output (reasoning included, which providers bill as output) are each
priced at their own rate. A model the table does not know gives no cost and a reason, never 0.

Speed: genai-prices resolves and decomposes the price on every call (~0.2 ms). A model's price is linear in
the four token counts within one input-size tier, so the per-token rates of each (provider, model, day, tier)
are derived once from calc_price itself and reused; every derived rate set is checked against calc_price at
a sample point before use, and any usage the rates cannot represent exactly goes to calc_price as before.
The Decimal results are the same as calc_price's, quantized to 1e-10.
"""

from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from genai_prices.data_snapshot import get_snapshot
from genai_prices.types import TieredPrices

from steps.values import Usage

# Steplens provider names -> genai-prices provider ids (where they differ).
_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic", "google": "google", "gemini": "google"}
_QUANTUM = Decimal("1e-10")


@dataclass(frozen=True, slots=True)
class Cost:
    usd: Decimal | None
    detail: str  # empty when priced; otherwise why there is no price


@dataclass(frozen=True, slots=True)
class _Rates:
    """total = base + input*i + cache_read*cr + cache_write*cw + output*o, exact within one tier."""

    base: Decimal
    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal

    def total(self, input_tokens: int, cache_read: int, cache_write: int, output_tokens: int) -> Decimal:
        return (
            self.base
            + self.input * input_tokens
            + self.cache_read * cache_read
            + self.cache_write * cache_write
            + self.output * output_tokens
        )


def _provider_id(provider: str | None) -> str | None:
    return _PROVIDER_IDS.get((provider or "").lower()) if provider else None


def _calc(
    provider_id: str | None, model: str, input_tokens: int, cache_read: int, cache_write: int, output: int, when
) -> Decimal:
    usage = PriceUsage(
        input_tokens=input_tokens,
        cache_read_tokens=cache_read or None,
        cache_write_tokens=cache_write or None,
        output_tokens=output,
    )
    return calc_price(usage, model_ref=model, provider_id=provider_id, genai_request_timestamp=when).total_price


@lru_cache(maxsize=1024)
def _tier_starts(provider_id: str | None, model: str, when: datetime | None) -> tuple[int, ...] | None:
    """Input-token thresholds where the model's rates change; None when the table does not know the model."""
    try:
        _, info = get_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError:
        return None
    prices = info.get_prices(when) if when is not None else None
    if prices is None:  # no timestamp: calc_price prices "now"; the thresholds of every period are boundaries
        candidates = [info.prices] if not isinstance(info.prices, list) else [c.prices for c in info.prices]
    else:
        candidates = [prices]
    starts = {
        tier.start
        for candidate in candidates
        for value in vars(candidate).values()
        if isinstance(value, TieredPrices)
        for tier in value.tiers
    }
    return tuple(sorted(starts))


@lru_cache(maxsize=4096)
def _rates(provider_id: str | None, model: str, when: datetime | None, tier: int) -> _Rates | None:
    """Per-token rates of one tier, derived from calc_price at points inside the tier; None if not derivable."""
    starts = _tier_starts(provider_id, model, when)
    if starts is None:
        return None
    low = starts[tier - 1] if tier > 0 else 0  # the tier holds input counts in (low, high]
    high = starts[tier] if tier < len(starts) else None
    at = low + 1
    if high is not None and at + 2 > high:
        return None
    try:
        zero = _calc(provider_id, model, at, 0, 0, 0, when)
        per_input = _calc(provider_id, model, at + 1, 0, 0, 0, when) - zero
        rates = _Rates(
            base=zero - per_input * at,
            input=per_input,
            cache_read=_calc(provider_id, model, at + 1, 1, 0, 0, when) - zero - per_input,
            cache_write=_calc(provider_id, model, at + 1, 0, 1, 0, when) - zero - per_input,
            output=_calc(provider_id, model, at, 0, 0, 1, when) - zero,
        )
        # Trust the rates only where they reproduce calc_price exactly.
        sample = (at + 2, 1, 1, 7) if high is None or at + 2 <= high else (at, 0, 0, 7)
        if rates.total(*sample) != _calc(provider_id, model, *sample, when):
            return None
    except (LookupError, ValueError, ArithmeticError):
        return None
    return rates


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
    provider_id = _provider_id(provider)
    try:
        total = _calc(provider_id, model, input_tokens, cache_read, cache_write, output_tokens, when)
    except LookupError:
        if provider_id is None:
            return Cost(None, f"unknown model {model!r}: not in the price table")
        return Cost(None, f"unknown model {model!r} for provider {provider!r}: not in the price table")
    return Cost(Decimal(total).quantize(_QUANTUM), "")


def _fast_price(
    provider: str | None, model: str, input_tokens: int, cache_read: int, cache_write: int, output: int, when
) -> Cost | None:
    """The cost from cached rates, or None when calc_price must decide (unknown model, odd usage, no rates)."""
    if cache_read + cache_write > input_tokens or when is None:
        return None  # calc_price rejects or infers these; "now" moves
    provider_id = _provider_id(provider)
    starts = _tier_starts(provider_id, model, when)
    if starts is None:
        return None
    rates = _rates(provider_id, model, when, bisect_left(starts, input_tokens))
    if rates is None:
        return None
    return Cost(rates.total(input_tokens, cache_read, cache_write, output).quantize(_QUANTUM), "")


def step_cost(*, provider: str | None, model: str | None, usage: Usage, when: datetime | None = None) -> Cost:
    """The USD cost of one call, or `Cost(None, reason)` when it cannot be priced."""
    if not model:
        return Cost(None, "no model recorded")
    if usage.prompt_tokens is None and usage.completion_tokens is None:
        return Cost(None, "provider reported no usage")
    # Prices change rarely; bucketing the timestamp by day keeps the caches useful.
    day = when.replace(hour=0, minute=0, second=0, microsecond=0) if when else None
    counts = (
        usage.prompt_tokens or 0,
        usage.cached_input_tokens or 0,
        usage.cache_write_tokens or 0,
        usage.completion_tokens or 0,
    )
    return _fast_price(provider, model, *counts, day) or _price(provider, model, *counts, day)
