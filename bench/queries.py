"""Query benchmark: p50/p95 of the REST query endpoints over a million seeded steps on PostgreSQL.

Seeds the organization with `seed_steps` when it has fewer steps than --count (COPY; a few minutes for
1,000,000), then calls each endpoint through the whole Django/DRF stack in process (API key auth,
filters, serialization; no network) --runs times after a warm-up, and prints a table.

    createdb -h 127.0.0.1 -U postgres steplens_querybench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/steplens_querybench \\
      .venv/bin/python bench/queries.py --count 1000000

Use a database of its own: the seeded rows stay there for the next run.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
# Persistent connections, as production runs (config.settings.production: CONN_MAX_AGE=60). With 0, each
# request would pay a new connection and a cold catalog cache (~10 ms of planning on the steps table).
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "60")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count  # noqa: E402

from accounts.models import Organization  # noqa: E402
from agents.models import Run  # noqa: E402
from bench.measure import api_client, measure  # noqa: E402
from steps.models import Message, Step  # noqa: E402

TARGETS_MS = {
    "step list: agent, 50 rows": 20,
    "request-id join": 10,
    "usage: 30 days by model, day": 50,
    "usage: 30 days (unaligned) by model, day": 50,
    "errors: 30 days by type": 50,
}


def _seed(organization_name: str, count: int) -> Organization:
    organization = Organization.objects.filter(name=organization_name).first()
    have = Step.objects.filter(organization=organization).count() if organization else 0
    if have < count:
        print(f"seeding {count - have:,} steps into {organization_name!r} (has {have:,})", flush=True)
        call_command("seed_steps", "--count", str(count - have), "--organization", organization_name)
        organization = Organization.objects.get(name=organization_name)
    return organization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="Steps the organization should have.")
    parser.add_argument("--organization", default="bench")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--with-scans", action="store_true", help="Also time the exact (scan) usage report.")
    parser.add_argument("--only", default="", help="Time only the queries whose name contains this text.")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Run against PostgreSQL: DATABASE_URL=postgres://...")
    settings.DEBUG = False  # no query log growing in memory
    call_command("migrate", "--noinput", verbosity=0)  # a new database needs the tables first

    organization = _seed(args.organization, args.count)
    client = api_client(organization)
    rng = random.Random(1)
    total = Step.objects.filter(organization=organization).count()

    agents = list(
        Step.objects.filter(organization=organization)
        .values("agent_id")
        .annotate(n=Count("pk"))
        .order_by("-n")
        .values_list("agent_id", flat=True)[:10]
    )
    detailed_runs = list(
        Message.objects.filter(organization=organization, run__isnull=False)
        .values_list("run_id", flat=True)
        .distinct()[:200]
    )
    request_ids = list(Run.objects.filter(pk__in=detailed_runs).values_list("request_id", flat=True))
    rng.shuffle(request_ids)
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    hour = now.replace(minute=0, second=0, microsecond=0)
    day_window = {"start": (today - timedelta(days=29)).isoformat(), "end": (today + timedelta(days=1)).isoformat()}
    hour_window = {"start": (hour - timedelta(days=30)).isoformat(), "end": (hour + timedelta(hours=1)).isoformat()}
    raw_window = {"start": (now - timedelta(days=30)).isoformat(), "end": now.isoformat()}
    # The dashboard's and monitors' kind of window: from a moment to the second, to tomorrow's midnight.
    ragged_window = {
        "start": (now - timedelta(days=30)).replace(microsecond=0).isoformat(),
        "end": (today + timedelta(days=1)).isoformat(),
    }
    first_page = client.get("/v1/steps", {"agent_id": agents[0], "limit": 50}).json()

    def get(path: str, params: dict | None = None) -> Callable[[int], object]:
        def call(i: int) -> object:
            response = client.get(path, params or {})
            assert response.status_code == 200, response.content[:500]
            return response.json()

        return call

    def rows(result: object) -> str:
        if isinstance(result, dict):
            for key in ("data", "steps"):
                if key in result:
                    return str(len(result[key]))
        return ""

    def step_list_by_agent(i: int) -> object:
        response = client.get("/v1/steps", {"agent_id": agents[i % len(agents)], "limit": 50})
        assert response.status_code == 200
        return response.json()

    def request_join(i: int) -> object:
        response = client.get(f"/v1/requests/{request_ids[i % len(request_ids)]}")
        assert response.status_code == 200
        return response.json()

    queries: list[tuple[str, Callable[[int], object]]] = [
        ("step list: agent, 50 rows", step_list_by_agent),
        (
            "step list: agent, page 2 (cursor)",
            get("/v1/steps", {"agent_id": agents[0], "limit": 50, "cursor": first_page["next_cursor"]}),
        ),
        ("step list: model + status=failed, 50", get("/v1/steps", {"model": "gpt-4o", "status": "failed"})),
        ("step list: metadata.tenant, 50", get("/v1/steps", {"metadata.tenant": "tenant-007"})),
        ("step list: tags=vip, 50", get("/v1/steps", {"tags": "vip"})),
        ("request-id join", request_join),
        ("run usage", get(f"/v1/runs/{detailed_runs[0]}/usage")),
        ("usage: 30 days by model, day", get("/v1/usage", {"group_by": "model,day", **day_window})),
        ("usage: 30 days (hour-aligned) by model, day", get("/v1/usage", {"group_by": "model,day", **hour_window})),
        ("usage: 30 days (unaligned) by model, day", get("/v1/usage", {"group_by": "model,day", **ragged_window})),
        ("usage: 30 days by agent, provider", get("/v1/usage", {"group_by": "agent,provider", **day_window})),
        (
            "usage: 7 days by hour",
            get("/v1/usage", {"group_by": "hour", "start": (hour - timedelta(days=7)).isoformat()}),
        ),
        ("errors: 30 days by type", get("/v1/errors", day_window)),
        ("errors: 30 days by type, model, day", get("/v1/errors", {"group_by": "model,day", **day_window})),
        ("errors: 30 days (unaligned) by type", get("/v1/errors", raw_window)),
    ]
    if args.with_scans:
        queries += [
            ("usage exact (scan): 30 days by model, day",
             get("/v1/usage", {"group_by": "model,day", "exact": "true", **day_window})),
            ("usage exact (scan): 1 day by user", get("/v1/usage", {"group_by": "user",
             "start": (today - timedelta(days=1)).isoformat(), "end": today.isoformat()})),
        ]  # fmt: skip

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n{total:,} steps in {organization.name!r}; {args.runs} runs per query after 3 warm-ups; load {load}\n")
    header = f"| {'query':<45} | {'p50 ms':>8} | {'p95 ms':>8} | {'cpu ms':>6} | {'target':>7} | {'rows':>5} "
    header += f"| {'source':>12} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, call in queries:
        if args.only not in name:
            continue
        runs = args.runs if "scan" not in name else max(3, args.runs // 5)
        p50, p95, cpu, result = measure(call, runs, warmup=1 if "scan" in name else 3)
        target = TARGETS_MS.get(name)
        verdict = f"≤{target}" if target else ""
        source = result.get("source", "") if isinstance(result, dict) else ""
        print(
            f"| {name:<45} | {p50:>8.1f} | {p95:>8.1f} | {cpu:>6.1f} | {verdict:>7} | {rows(result):>5} "
            f"| {source:>12} |"
        )
    print()


if __name__ == "__main__":
    main()
