"""Probe and scrape cost: milliseconds per GET /healthz, /readyz and /metrics through the whole middleware stack.

Runs Django's test client in process (no network, no gunicorn) against the configured database, so the figures are
Steplens's own cost: the middleware, the checks' queries, the state gauges' aggregates. With a broker configured
(CELERY_BROKER_URL, not eager) /readyz and /metrics also talk to it.

    .venv/bin/python bench/probes.py --requests 500
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/steplens .venv/bin/python bench/probes.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "60")
os.environ.setdefault("STEPLENS_METRICS_TOKEN", "bench-token")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.test import Client  # noqa: E402


def _time(client: Client, path: str, count: int, headers: dict[str, str]) -> list[float]:
    client.get(path, **headers)  # the first answer loads the URL conf and the migration plan
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(path, **headers)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code in (200, 503), (path, response.status_code, response.content[:300])
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    client = Client(HTTP_HOST=settings.ALLOWED_HOSTS[0] if settings.ALLOWED_HOSTS else "127.0.0.1")
    token = {"HTTP_AUTHORIZATION": f"Bearer {settings.STEPLENS_METRICS_TOKEN}"}
    print(f"database {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, {args.requests} requests each")
    print(f"{'path':<10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for path, headers in (("/healthz", {}), ("/readyz", {}), ("/metrics", token)):
        samples = sorted(_time(client, path, args.requests, headers))
        q = statistics.quantiles(samples, n=100)
        print(f"{path:<10} {q[49]:>8.3f} {q[94]:>8.3f} {q[98]:>8.3f} {samples[-1]:>8.3f}")


if __name__ == "__main__":
    main()
