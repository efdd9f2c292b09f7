"""What the query benchmarks share: timing a call (p50/p95 after warm-up) and an API client with a fresh key.

Import after django.setup() (the scripts set DJANGO_SETTINGS_MODULE and call it first).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from rest_framework.test import APIClient

from accounts.models import Organization
from accounts.services import api_key_create


def api_client(organization: Organization) -> APIClient:
    """A DRF client authenticated with a new full key of `organization` (the whole auth path runs per request)."""
    _, raw_key = api_key_create(organization=organization, name="bench")
    client = APIClient(SERVER_NAME="localhost")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def measure(call: Callable[[int], object], runs: int, warmup: int = 3) -> tuple[float, float, float, object]:
    """p50 and p95 wall-clock ms, and the p50 CPU ms this process spent (the Django side, without the database)."""
    result = None
    for i in range(warmup):
        result = call(i)
    timings, cpu = [], []
    for i in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = call(i)
        timings.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    timings.sort()
    p95 = timings[min(len(timings) - 1, round(0.95 * (len(timings) - 1)))]
    return statistics.median(timings), p95, statistics.median(cpu), result
