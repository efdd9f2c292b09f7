"""Fixed log-scale histogram buckets for latency and TTFT, shared by the rollups' writes and reads.

Bucket 0 holds values below 1 ms; bucket i (1..60) holds [2^((i-1)/3), 2^(i/3)) ms; bucket 61 holds
everything from 2^20 ms (about 17.5 minutes) up. Each bucket is 26% wider than the one before, so a
percentile read from the histogram lies in the right bucket exactly and is interpolated inside it.
The bounds are integers in nanoseconds so Python (`bisect`) and PostgreSQL (`width_bucket`) agree.
"""

import bisect
import itertools
import math
from collections.abc import Sequence

BOUNDS_NS: tuple[int, ...] = tuple(round(1_000_000 * 2 ** (k / 3)) for k in range(61))
BUCKETS = len(BOUNDS_NS) + 1


def bucket_of(value_ns: int) -> int:
    """The bucket index of a duration in nanoseconds."""
    return bisect.bisect_right(BOUNDS_NS, value_ns)


def bucket_range_ns(index: int) -> tuple[float, float | None]:
    """[low, high) of a bucket in nanoseconds; the last bucket has no upper bound."""
    low = 0.0 if index == 0 else float(BOUNDS_NS[index - 1])
    high = float(BOUNDS_NS[index]) if index < len(BOUNDS_NS) else None
    return low, high


# Per bucket: its lower bound, upper bound (None for the last) and upper/lower ratio, in nanoseconds.
_LOWS: tuple[float, ...] = (0.0, *(float(b) for b in BOUNDS_NS))
_HIGHS: tuple[float | None, ...] = (*(float(b) for b in BOUNDS_NS), None)
_RATIOS: tuple[float, ...] = (0.0, *(BOUNDS_NS[i] / BOUNDS_NS[i - 1] for i in range(1, len(BOUNDS_NS))), 0.0)


def _order_statistic(counts: Sequence[int], cumulative: list[int], rank: int, index: int) -> float:
    """An estimate of the rank-th smallest value (from 0), which lies in bucket `index`: inside the bucket,
    the values are taken as spread evenly on a log scale."""
    if index >= len(counts):
        return _LOWS[len(counts) - 1]
    high = _HIGHS[index]
    if high is None:
        return _LOWS[index]
    in_bucket = counts[index]
    position = (rank - cumulative[index] + in_bucket + 0.5) / in_bucket
    if index == 0:
        return high * position
    return _LOWS[index] * _RATIOS[index] ** position


def percentiles_from_counts(counts: Sequence[int], fractions: Sequence[float]) -> list[float | None]:
    """Percentiles (0..1) of the histogram, in nanoseconds, the way percentile_cont computes them.

    percentile_cont interpolates linearly between the values at ranks floor(f * (n - 1)) and the next;
    here each of those two values is estimated inside its bucket, so a result is off by at most one
    bucket's width (26%) from the exact percentile. Reports compute these for hundreds of groups per
    request, hence the precomputed bucket tables and the single search per percentile.
    """
    cumulative = list(itertools.accumulate(counts))
    total = cumulative[-1] if cumulative else 0
    if total == 0:
        return [None] * len(fractions)
    results: list[float | None] = []
    for fraction in fractions:
        rank = fraction * (total - 1)
        below = math.floor(rank)
        index = bisect.bisect_right(cumulative, below)
        low_value = _order_statistic(counts, cumulative, below, index)
        if rank == below:
            results.append(low_value)
            continue
        # The next value is in the same bucket unless `below` was that bucket's last.
        if index < len(cumulative) and cumulative[index] <= below + 1:
            index = bisect.bisect_right(cumulative, below + 1, index)
        high_value = _order_statistic(counts, cumulative, below + 1, index)
        results.append(low_value + (rank - below) * (high_value - low_value))
    return results


def percentile_from_counts(counts: list[int], fraction: float) -> float | None:
    """One percentile of the histogram (see percentiles_from_counts)."""
    return percentiles_from_counts(counts, [fraction])[0]
