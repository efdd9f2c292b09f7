"""Monitor evaluation benchmark: seconds per evaluation cycle of 1,000 monitors over seeded steps on PostgreSQL.

Seeds the organization with `seed_steps` when it has fewer steps than --count (COPY), spreads the end users of the
last 8 days' steps (what the longest window reads) over --users ids (seed_steps draws from 5,000) and rebuilds the
rollups (those per end user follow), then creates --monitors monitors (anew each run) and times --cycles evaluation
cycles (`monitors_evaluate`, what Celery beat runs every minute). The mix, per 1,000:

- 100 split by end user (`group_by: user`): cost, tokens, steps and errors per user over 1 hour to 7 days, half of
  them on the whole organization, half on one agent;
- 500 on one agent: error rate, p95 latency and TTFT, cost and steps over 5 minutes to 7 days;
- 200 on one model handle or provider;
- 100 on one end user (user_id) over an hour;
- 100 with a tag or metadata filter (one report each: nothing to share).

    createdb -h 127.0.0.1 -U postgres steplens_monitorbench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/steplens_monitorbench \\
      .venv/bin/python bench/monitors.py --count 1000000

Use a database of its own: the seeded rows stay there for the next run. Notifications are not
sent (the monitors have no targets): the cycle's own cost is what is measured.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "60")

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from accounts.models import Organization  # noqa: E402
from agents.models import Agent  # noqa: E402
from monitors.evaluation import plan  # noqa: E402
from monitors.models import AlertEvent, Monitor  # noqa: E402
from monitors.services import monitor_create, monitors_evaluate  # noqa: E402
from steps.models import Step  # noqa: E402
from steps.rollups import step_rollups_rebuild  # noqa: E402

WINDOWS = (300, 600, 3600, 6 * 3600, 86400, 7 * 86400)


def _seed(name: str, count: int, users: int) -> Organization:
    organization = Organization.objects.filter(name=name).first()
    have = Step.objects.filter(organization=organization).count() if organization else 0
    if have < count:
        print(f"seeding {count - have:,} steps into {name!r} (has {have:,})", flush=True)
        started = time.perf_counter()
        call_command("seed_steps", "--count", str(count - have), "--organization", name)
        print(f"  seeded in {time.perf_counter() - started:.0f} s", flush=True)
        organization = Organization.objects.get(name=name)
    recent = timezone.now() - timedelta(days=8)  # the longest window (7 days) and a day of margin
    spread = Step.objects.filter(organization=organization, created_at__gte=recent, user_id__gte="user-05000")
    if users > 5000 and not spread.exists():
        started = time.perf_counter()
        with connection.cursor() as cursor:  # seed_steps draws end users from 5,000 ids: spread them over `users`
            cursor.execute(
                f"UPDATE {Step._meta.db_table} SET user_id = 'user-' || lpad((abs(hashtext(id)) %% %s)::text, 5, '0') "
                "WHERE organization_id = %s AND created_at >= %s",
                [users, organization.pk, recent],
            )
        print(f"  end users spread over {users:,} ids in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        step_rollups_rebuild(organization=organization)  # the per-end-user rollups follow the new ids
        print(f"  rollups rebuilt in {time.perf_counter() - started:.0f} s", flush=True)
    return organization


def _monitors(organization: Organization, total: int, rng: random.Random) -> None:
    Monitor.objects.filter(organization=organization).delete()  # each run starts from the same monitors, no state
    agents = list(Agent.objects.filter(organization=organization).values_list("pk", flat=True))
    models = list(Step.objects.filter(organization=organization).values_list("model_handle", flat=True).distinct()[:50])
    providers = ["openai", "anthropic", "google"]
    users = [f"user-{i:05d}" for i in range(0, 10_000, 97)]
    per = total / 1000

    def make(count: float, build) -> None:
        for index in range(round(count * per)):
            data = {"window_seconds": 600, "min_steps": 5, "operator": ">", **build(index)}
            data.setdefault("name", f"bench {data['metric']} {index}")
            monitor_create(organization=organization, data=data)

    per_user = {"cost_usd": (5, 50), "total_tokens": (500_000, 5_000_000), "steps": (200, 500), "error_count": (20, 50)}

    def split(i: int) -> dict:
        metric = rng.choice(list(per_user))
        return {"group_by": "user", "metric": metric, "threshold": rng.choice(per_user[metric]),
                "window_seconds": rng.choice([3600, 86400, 7 * 86400]), "min_steps": 1,
                **({"filters": {"agent_id": rng.choice(agents)}} if i % 2 else {})}  # fmt: skip

    make(100, split)
    make(500, lambda i: {
        "filters": {"agent_id": agents[i % len(agents)]},
        "metric": rng.choice(["error_rate", "latency_ms_p95", "ttft_ms_p95", "cost_usd", "steps"]),
        "threshold": rng.choice([0.05, 0.2, 2000, 8000, 10]), "window_seconds": rng.choice(WINDOWS),
    })  # fmt: skip
    make(200, lambda i: {
        "filters": {"model_handle": rng.choice(models)} if i % 2 else {"provider": rng.choice(providers)},
        "metric": rng.choice(["error_rate", "latency_ms_p99", "total_tokens"]), "threshold": rng.choice([0.1, 5000]),
        "window_seconds": rng.choice(WINDOWS),
    })  # fmt: skip
    make(100, lambda i: {"filters": {"user_id": users[i % len(users)]}, "metric": "cost_usd", "threshold": 1,
                         "window_seconds": 3600, "min_steps": 1})  # fmt: skip
    make(100, lambda i: {
        "filters": {"tags": rng.choice(["prod", "beta", "vip", "canary"])} if i % 2 else {"metadata.tier": "gold"},
        "metric": "error_rate", "threshold": 0.1, "window_seconds": rng.choice([600, 3600]),
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="Steps in the organization (seeded if fewer).")
    parser.add_argument("--users", type=int, default=10_000, help="End users the steps are spread over.")
    parser.add_argument("--monitors", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--organization", default="monitorbench")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Run it on PostgreSQL (DATABASE_URL=postgres://...): the figures are meant for production.")
    call_command("migrate", verbosity=0)
    organization = _seed(args.organization, args.count, args.users)
    _monitors(organization, args.monitors, random.Random(11))
    monitors = list(Monitor.objects.filter(organization=organization, enabled=True))
    steps = Step.objects.filter(organization=organization).count()
    queries = plan(monitors)
    print(f"{len(monitors):,} monitors ({sum(1 for m in monitors if m.group_by):,} split by end user) over "
          f"{steps:,} steps; {len(queries):,} reports per cycle")  # fmt: skip
    seconds = []
    for cycle in range(args.cycles):
        report = monitors_evaluate(organization=organization, now=timezone.now())
        seconds.append(report.seconds)
        print(f"cycle {cycle + 1}: {report.seconds:7.2f} s  ({report.queries} reports, {report.events} events, "
              f"{len(report.errors)} errors)", flush=True)  # fmt: skip
    alerting = Monitor.objects.filter(organization=organization, state="alerting").count()
    print()
    print("| monitors | split by user | steps | reports/cycle | cycle p50 | cycle max |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(monitors):,} | {sum(1 for m in monitors if m.group_by)} | {steps:,} | {len(queries)} | "
          f"{statistics.median(seconds):.2f} s | {max(seconds):.2f} s |")  # fmt: skip
    print(f"\n{alerting} monitors alerting, {AlertEvent.objects.filter(organization=organization).count():,} events")


if __name__ == "__main__":
    main()
