"""Where the time of two read paths goes, READ-ONLY against an existing database (e.g. a bench/scale.py one).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/steplens_scale_1m .venv/bin/python bench/request_join.py

The request-id join (`GET /v1/requests/{id}`) and the console's steps list (`/admin/steps/step/?organization=`):
p50 / p95 through the whole stack (as bench/scale.py), then per SQL statement (time in `cursor.execute` plus
fetch) and the request join's phases (selector, rendering, JSON). Every transaction is read-only
(`default_transaction_read_only`): the API key and the superuser are in memory, never stored.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")


def _setup() -> None:
    import django
    from django.conf import settings

    django.setup()
    settings.DEBUG = False  # as bench/scale.py: no query log (and the queries run as in production)
    for alias in settings.DATABASES:
        if settings.DATABASES[alias]["ENGINE"].endswith("postgresql"):
            options = settings.DATABASES[alias].setdefault("OPTIONS", {})
            options["options"] = (options.get("options", "") + " -c default_transaction_read_only=on").strip()


def _fake_auth(organization: Any) -> Any:
    """An API client whose key lives in memory: the key lookup is replaced by an equivalent one-row query."""
    from django.db import connection
    from rest_framework.test import APIClient

    import accounts.authentication as authentication
    from accounts.models import ApiKey, ApiKeyScope

    def authenticate(*, raw_key: str) -> ApiKey:
        with connection.cursor() as cursor:  # stands for the real indexed key lookup
            cursor.execute("SELECT id, name FROM accounts_organization WHERE id = %s", [organization.pk])
            cursor.fetchone()
        key = ApiKey(pk=1, name="bench", scope=ApiKeyScope.FULL, organization_id=organization.pk)
        key.organization = _copy(organization)
        key.organization.scoped_project_id = None
        return key

    authentication.api_key_authenticate = authenticate
    client = APIClient(SERVER_NAME="localhost")
    client.credentials(HTTP_AUTHORIZATION="Bearer in-memory")
    return client


def _copy(organization: Any) -> Any:
    """A fresh instance per request, as the key lookup gives (selectors read its scoped_project_id)."""
    return copy.copy(organization)


def _fake_superuser() -> Any:
    """A browser whose superuser lives in memory (the session middleware is given it directly)."""
    import django.contrib.auth as auth
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model()(pk=10**9, username="scale-bench", is_superuser=True, is_staff=True, is_active=True)
    auth.get_user = lambda request: user
    return Client(SERVER_NAME="localhost")


class Statements:
    """Time per SQL statement (execute and fetch) of the calls made inside `collect()`."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.current: dict[str, float] = defaultdict(float)

    def __call__(self, execute: Callable, sql: str, params: Any, many: bool, context: dict) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            key = " ".join(sql.split())[:110]
            self.current[key] += (time.perf_counter() - started) * 1000

    def flush(self) -> None:
        for key, ms in self.current.items():
            self.times[key].append(ms)
        self.current = defaultdict(float)


def measure(call: Callable[[int], object], runs: int, warmup: int = 3) -> tuple[float, float]:
    for i in range(warmup):
        call(i)
    timings = []
    for i in range(runs):
        started = time.perf_counter()
        call(i)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return statistics.median(timings), timings[min(len(timings) - 1, round(0.95 * (len(timings) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organization", default="scale")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only", choices=["request", "console"], default=None)
    parser.add_argument("--profile", action="store_true", help="cProfile the request join, top 25 by cumulative")
    args = parser.parse_args()
    _setup()
    from django.db import connection

    from accounts.models import Organization
    from agents.models import Run
    from steps.models import Message

    organization = Organization.objects.get(name=args.organization)
    recent = Run.objects.filter(organization=organization, created_at__gte=datetime.now(UTC) - timedelta(days=3))
    detailed = list(
        Message.objects.filter(organization=organization, run__in=recent.values("pk")[:2000])
        .values_list("run_id", flat=True)
        .distinct()[:200]
    )
    request_ids = list(Run.objects.filter(pk__in=detailed).values_list("request_id", flat=True))
    client, browser = _fake_auth(organization), _fake_superuser()
    print(f"{len(request_ids)} request ids; load {', '.join(f'{v:.1f}' for v in os.getloadavg())}")

    def request_join(i: int) -> object:
        response = client.get(f"/v1/requests/{request_ids[i % len(request_ids)]}")
        assert response.status_code == 200, response.content[:300]
        return response

    def console(i: int) -> object:
        response = browser.get("/admin/steps/step/", {"organization": organization.pk})
        assert response.status_code == 200, (response.status_code, response.content[:300])
        return response

    plan = [("request-id join", request_join), ("console: steps list", console)]
    if args.only:
        plan = [plan[0 if args.only == "request" else 1]]
    for name, call in plan:
        p50, p95 = measure(call, args.runs)
        statements = Statements()
        with connection.execute_wrapper(statements):
            for i in range(args.runs):
                call(i)
                statements.flush()
        print(f"\n{name}: p50 {p50:.1f} ms, p95 {p95:.1f} ms; SQL per call (p50 ms):")
        total = 0.0
        for key, times in sorted(statements.times.items(), key=lambda kv: -statistics.median(kv[1])):
            med = statistics.median(times) * len(times) / args.runs
            total += med
            print(f"  {med:7.2f}  {key}")
        print(f"  {total:7.2f}  in all")
    if args.profile:
        _phases(organization, request_ids, args.runs)


def _phases(organization: Any, request_ids: list[str], runs: int) -> None:
    """The request join's phases outside HTTP: selector, rendering, JSON encoding."""
    import cProfile
    import pstats

    from rest_framework.renderers import JSONRenderer

    from steps.api.views import request_data
    from steps.selectors import request_get

    phases: dict[str, list[float]] = defaultdict(list)
    profile = cProfile.Profile()
    for i in range(runs + 3):
        org = _copy(organization)
        org.scoped_project_id = None
        t0 = time.perf_counter()
        profile.enable()
        record = request_get(organization=org, request_id=request_ids[i % len(request_ids)])
        t1 = time.perf_counter()
        body = request_data(record)
        t2 = time.perf_counter()
        JSONRenderer().render(body)
        t3 = time.perf_counter()
        profile.disable()
        if i >= 3:
            phases["selector"].append((t1 - t0) * 1000)
            phases["render"].append((t2 - t1) * 1000)
            phases["json"].append((t3 - t2) * 1000)
    print("\nrequest join phases (p50 ms): " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in phases.items()))
    pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
