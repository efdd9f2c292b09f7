"""Per API key rate limiting: over the rate, a 429 with Retry-After (DRF adds the header).

A fixed window per key: one atomic increment of one integer per request, whatever the rate. (DRF's
SimpleRateThrottle keeps a list of every request time in the window and reads and writes it whole on
each request, which at the default 100,000/minute grows to megabytes per busy key.) A client can send
up to twice the rate across a window boundary; Retry-After is the time left in the current window.
"""

import time
from typing import Any

from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

_DURATIONS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """'6000/minute' -> (6000, 60): requests per window, window in seconds (DRF's rate syntax)."""
    count, _, period = rate.partition("/")
    if not count.strip().isdigit() or not period or period.strip()[0] not in _DURATIONS:
        raise ValueError(f"Invalid rate {rate!r}: use e.g. 6000/minute (s, m, h or d).")
    return int(count), _DURATIONS[period.strip()[0]]


class ApiKeyRateThrottle(BaseThrottle):
    """One counter per API key and window (`STEPLENS_API_RATE`, e.g. "6000/minute"); views without a key
    are not limited.

    Counters live in the Django cache (`CACHE_URL`): per process with the local-memory default, shared
    by every web process when it points at Redis (production's default when REDIS_URL is set).
    """

    scope = "api_key"
    timer = staticmethod(time.time)

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        # Read the setting on each request so a changed rate (tests, settings reload) applies at once.
        rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        api_key = getattr(request, "auth", None)
        if rate is None or getattr(api_key, "pk", None) is None:
            return True
        limit, duration = parse_rate(rate)
        now = self.timer()
        window = int(now // duration)
        key = f"throttle:{self.scope}:{api_key.pk}:{duration}:{window}"
        cache.add(key, 0, timeout=duration + 1)  # a no-op when this window's counter exists
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=duration + 1)
            count = 1
        if count <= limit:
            return True
        self._wait = (window + 1) * duration - now
        return False

    def wait(self) -> float | None:
        return self._wait
