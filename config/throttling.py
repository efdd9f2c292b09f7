"""Per API key rate limiting: over the rate, a 429 with Retry-After (DRF adds the header)."""

from typing import Any

from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle


class ApiKeyRateThrottle(SimpleRateThrottle):
    """One bucket per API key (`STEPLENS_API_RATE`, e.g. "6000/minute"); unauthenticated views are not limited.

    Counters live in the Django cache: per process with the default local-memory cache, shared when
    CACHES points at Redis.
    """

    scope = "api_key"

    def get_rate(self) -> str | None:
        # Read the setting on each request so a changed rate (tests, settings reload) applies at once.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request: Request, view: Any) -> bool:
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        api_key = getattr(request, "auth", None)
        if api_key is None or getattr(api_key, "pk", None) is None:
            return None
        return self.cache_format % {"scope": self.scope, "ident": api_key.pk}
