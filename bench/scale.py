"""Scale benchmark: the same queries at 1M and at 10M steps in one run, with the costs of size (issue 13, part 6).

Each size has a PostgreSQL database of its own (migrated here, so the steps tables are partitioned; seeded with
`seed_steps` over 90 days and 10,000 end users unless --reuse finds the rows there). Per size it prints:

- p50/p95 over --runs calls after 3 warm-ups, through the whole Django/DRF stack in process (API key auth,
  filters, serialization; no network), as bench/queries.py does: the step list by agent, the request-id join,
  usage by model and day over 30 days from a moment to the second, the errors report over 30 days, and, as a
  logged-in superuser through the Django test client, the console's steps list (admin changelist) and dashboard;
- bytes on disk per step: steps, metrics, messages and provider traces (every partition, with indexes and TOAST),
  the rollups, and the runs;
- deleting one end user's steps (the user with about 1,000 steps): steps.deletion, rollups included;
- dropping a month: steps.retention.retention_apply with a 60-day retention, applied as of the moment that puts
  the cutoff on a partition bound about 30 days after the oldest step (whole partitions dropped; runs left
  empty go in batches);
- the time to seed (when this run seeded).

The deletion and the retention remove data: they run last, and a later --reuse run tops the rows up again.

    createdb -h 127.0.0.1 -U postgres steplens_scale_1m; createdb -h 127.0.0.1 -U postgres steplens_scale_10m
    .venv/bin/python bench/scale.py \\
      --database-url-small postgres://postgres@127.0.0.1:5432/steplens_scale_1m \\
      --database-url postgres://postgres@127.0.0.1:5432/steplens_scale_10m

(--database-url defaults to DATABASE_URL; --database-url-small to the same URL with `_small` after the
database name.) Disk: about 2.5 GB per million steps with --detail-share 0.2 (the default here; this machine's
disk cannot hold 10M steps with every run detailed, about 6 KB per step), see the bytes-per-step lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
TARGETS_MS = {
    "step list: agent, 50 rows": 20,
    "request-id join": 10,
    "usage: 30 days (unaligned) by model, day": 50,
    "errors: 30 days by type": 50,
    "errors: 30 days (unaligned) by type": 50,
}
RESULT = "SCALE-RESULT "


def _small_url(url: str) -> str:
    parsed = urlparse(url)
    return parsed._replace(path=parsed.path.rstrip("/") + "_small").geturl()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count-small", type=int, default=1_000_000, help="Steps in the small database.")
    parser.add_argument("--count", type=int, default=10_000_000, help="Steps in the large database.")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""), help="The large database.")
    parser.add_argument("--database-url-small", default="", help="The small database.")
    parser.add_argument("--reuse", action="store_true", help="Skip seeding when the database has the rows.")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--detail-share", type=float, default=0.2, help="Share of runs with messages and traces.")
    parser.add_argument("--organization", default="scale")
    parser.add_argument("--only", choices=["small", "large"], help="Run one size only.")
    parser.add_argument("--no-retention", action="store_true", help="Skip dropping a month (it removes data).")
    parser.add_argument("--phase", choices=["small", "large"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args)
        return
    if not args.database_url.startswith("postgres"):
        sys.exit("Run against PostgreSQL: --database-url postgres://... (or DATABASE_URL)")
    sizes = [("small", args.count_small, args.database_url_small or _small_url(args.database_url)),
             ("large", args.count, args.database_url)]  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    for name, count, url in sizes:
        if args.only and args.only != name:
            continue
        print(f"\n=== {count:,} steps: {urlparse(url).path.lstrip('/')} ===", flush=True)
        command = [sys.executable, __file__, "--phase", name, "--count", str(count), "--runs", str(args.runs),
                   "--days", str(args.days), "--users", str(args.users), "--detail-share", str(args.detail_share),
                   "--organization", args.organization, *(["--reuse"] if args.reuse else []),
                   *(["--no-retention"] if args.no_retention else [])]  # fmt: skip
        env = {**os.environ, "DATABASE_URL": url}
        with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT) as process:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(RESULT):
                    results[name] = json.loads(line[len(RESULT) :])
                else:
                    print(line, end="", flush=True)
        if process.returncode:
            sys.exit(f"the {name} phase failed ({process.returncode})")
    summary(results)


def summary(results: dict[str, dict[str, Any]]) -> None:
    small, large = results.get("small"), results.get("large")
    head = [r for r in (small, large) if r]
    if not head:
        return
    labels = [f"{r['steps'] / 1e6:.1f}M" if r["steps"] >= 1e6 else f"{r['steps'] / 1e3:.0f}k" for r in head]
    print("\n=== summary ===\n")
    cols = "".join(f" {label + ' p50':>10} | {label + ' p95':>10} |" for label in labels)
    print(f"| {'query':<42} |{cols} {'target':>7} | {'ratio':>6} |")
    print("|" + "-" * 44 + "|" + "------------|" * (2 * len(head)) + "---------|--------|")
    for name in head[-1]["queries"]:
        values = "".join(f" {r['queries'][name]['p50']:>10.1f} | {r['queries'][name]['p95']:>10.1f} |" for r in head)
        target = TARGETS_MS.get(name)
        ratio = ""
        if small and large and name in small["queries"]:
            ratio = f"{large['queries'][name]['p50'] / small['queries'][name]['p50']:.2f}x"
        verdict = f"≤{target}" if target else ""
        print(f"| {name:<42} |{values} {verdict:>7} | {ratio:>6} |")
    print("\n(ratio: the larger size's p50 over the smaller's; the target asks for at most 1.5x)\n")
    for label, r in zip(labels, head, strict=True):
        disk = r["disk"]
        print(f"{label}: {r['steps']:,} steps; bytes per step: {disk['per_step']:,.0f} in steps, metrics, messages "
              f"and provider traces (+{disk['rollups_per_step']:,.0f} rollups, +{disk['runs_per_step']:,.0f} runs); "
              f"at detail share 1: about {disk['per_step_all_detailed']:,.0f}")  # fmt: skip
        deletion = r.get("deletion")
        if deletion:
            print(f"{label}: deleted end user {deletion['user_id']}'s {deletion['steps']:,} steps (rollups "
                  f"included) in {deletion['seconds']:.2f} s (target < 5 s for 1,000 among 10M)")  # fmt: skip
        retention = r.get("retention")
        if retention:
            print(f"{label}: retention removed {retention['steps']:,} steps ({retention['partitions']} partition "
                  f"intervals dropped, {retention['runs']:,} runs in batches) in {retention['seconds']:.2f} s; "
                  f"out of the tables (detached) in {retention['detach_seconds']:.2f} s (target < 1 s); detached, "
                  f"counted and dropped in {retention['drop_seconds']:.2f} s")  # fmt: skip
        if r.get("seed_seconds") is not None:
            print(f"{label}: seeded in {r['seed_seconds']:.0f} s ({r['seeded']:,} steps)")
        else:
            print(f"{label}: reused the seeded rows (not seeded in this run)")


def phase(args: argparse.Namespace) -> None:
    """One size, in a process of its own (one database per process): seed, measure, print a RESULT line."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    os.environ.setdefault("DATABASE_CONN_MAX_AGE", "60")  # persistent connections, as production runs
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import Organization

    if connection.vendor != "postgresql":
        sys.exit("Run against PostgreSQL: DATABASE_URL=postgres://...")
    settings.DEBUG = False
    call_command("migrate", "--noinput", verbosity=0)
    result: dict[str, Any] = {"seed_seconds": None, "seeded": 0}
    organization = Organization.objects.filter(name=args.organization).first()
    have = _steps(organization)
    if have and not args.reuse:
        sys.exit(f"{args.organization!r} already has {have:,} steps here: pass --reuse, or use a fresh database")
    if have < 0.85 * args.count:
        from steps.management.commands.seed_steps import seed_steps

        print(f"seeding {args.count - have:,} steps ({have:,} there)", flush=True)
        started = time.perf_counter()
        organization = seed_steps(
            organization_name=args.organization, count=args.count - have, days=args.days, users=args.users,
            detail_share=args.detail_share, log=lambda line: print("  " + line, flush=True),
        )  # fmt: skip
        result["seed_seconds"] = time.perf_counter() - started
        result["seeded"] = args.count - have
    assert organization is not None
    result["steps"] = _steps(organization)
    result["queries"] = queries(organization, runs=args.runs)
    result["disk"] = disk(result["steps"])
    print(f"bytes per step: {json.dumps(result['disk'])}", flush=True)
    result["deletion"] = delete_one_user(organization)
    result["retention"] = None if args.no_retention else drop_a_month(organization)
    print(RESULT + json.dumps(result), flush=True)


def _steps(organization: Any) -> int:
    from steps.models import Step

    return Step.objects.filter(organization=organization).count() if organization else 0


def queries(organization: Any, *, runs: int) -> dict[str, dict[str, float]]:
    from django.contrib.auth import get_user_model
    from django.db.models import Count
    from django.test import Client

    from agents.models import Run
    from bench.measure import api_client, measure
    from steps.models import Message, Step

    client = api_client(organization)
    agents = list(
        Step.objects.filter(organization=organization, created_at__gte=datetime.now(UTC) - timedelta(days=7))
        .values("agent_id")
        .annotate(n=Count("pk"))
        .order_by("-n")
        .values_list("agent_id", flat=True)[:10]
    )
    recent_runs = Run.objects.filter(organization=organization, created_at__gte=datetime.now(UTC) - timedelta(days=3))
    detailed = list(
        Message.objects.filter(organization=organization, run__in=recent_runs.values("pk")[:2000])
        .values_list("run_id", flat=True)
        .distinct()[:200]
    )
    request_ids = list(Run.objects.filter(pk__in=detailed).values_list("request_id", flat=True))
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    day_window = {"start": (today - timedelta(days=29)).isoformat(), "end": (today + timedelta(days=1)).isoformat()}
    ragged = {"start": (now - timedelta(days=30)).replace(microsecond=0).isoformat(),
              "end": (today + timedelta(days=1)).isoformat()}  # fmt: skip
    raw = {"start": (now - timedelta(days=30)).isoformat(), "end": now.isoformat()}
    admin = get_user_model().objects.filter(username="scale-bench").first()
    if admin is None:
        admin = get_user_model().objects.create_superuser("scale-bench", "scale-bench@example.com", None)
    browser = Client(SERVER_NAME="localhost")
    browser.force_login(admin)

    def api(path: str, params: dict | None = None, rotate: list | None = None, key: str = "") -> Any:
        def call(i: int) -> object:
            query = dict(params or {})
            target = path
            if rotate:
                value = rotate[i % len(rotate)]
                target, query = (path.format(value), query) if "{}" in path else (path, {**query, key: value})
            response = client.get(target, query)
            assert response.status_code == 200, response.content[:300]
            return response.json()

        return call

    def page(path: str, params: dict) -> Any:
        def call(i: int) -> object:
            response = browser.get(path, params)
            assert response.status_code == 200, (response.status_code, response.content[:300])
            return len(response.content)

        return call

    org = {"organization": organization.pk}
    plan = [
        ("step list: agent, 50 rows", api("/v1/steps", {"limit": 50}, agents, "agent_id")),
        ("request-id join", api("/v1/requests/{}", None, request_ids)),
        ("usage: 30 days (unaligned) by model, day", api("/v1/usage", {"group_by": "model,day", **ragged})),
        ("usage: 30 days by model, day", api("/v1/usage", {"group_by": "model,day", **day_window})),
        ("errors: 30 days by type", api("/v1/errors", day_window)),
        ("errors: 30 days (unaligned) by type", api("/v1/errors", raw)),
        ("console: steps list (admin changelist)", page("/admin/steps/step/", org)),
        ("console: dashboard", page("/admin/dashboard/", org)),
    ]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n{_steps(organization):,} steps; {runs} runs per query after 3 warm-ups; load {load}\n", flush=True)
    print(f"| {'query':<42} | {'p50 ms':>8} | {'p95 ms':>8} | {'cpu ms':>6} | {'target':>7} | {'source':>12} |")
    print("|" + "-" * 44 + "|----------|----------|--------|---------|--------------|", flush=True)
    out = {}
    for name, call in plan:
        p50, p95, cpu, result = measure(call, runs)
        source = result.get("source", "") if isinstance(result, dict) else ""
        target = TARGETS_MS.get(name)
        verdict = f"≤{target}" if target else ""
        print(f"| {name:<42} | {p50:>8.1f} | {p95:>8.1f} | {cpu:>6.1f} | {verdict:>7} | {source:>12} |", flush=True)
        out[name] = {"p50": p50, "p95": p95, "cpu": cpu}
    return out


def disk(steps: int) -> dict[str, float]:
    """Bytes on disk (tables, partitions, indexes, TOAST) per step."""
    from django.db import connection

    from agents.models import Run
    from steps.models import (
        ErrorRollupDay,
        ErrorRollupHour,
        Message,
        ProviderTrace,
        Step,
        StepMetrics,
        StepRollupDay,
        StepRollupHour,
        SubjectRollupDay,
        SubjectRollupHour,
    )

    def size(*models: Any) -> int:
        with connection.cursor() as cursor:
            cursor.execute(  # a partitioned table's partitions (with their indexes), else the table itself
                "SELECT coalesce(sum(CASE WHEN c.relkind = 'p' THEN (SELECT sum(pg_total_relation_size(t.relid)) "
                "FROM pg_partition_tree(c.oid) t WHERE t.isleaf) ELSE pg_total_relation_size(c.oid) END), 0) "
                "FROM pg_class c WHERE c.oid = ANY(%s::regclass[])",
                [[m._meta.db_table for m in models]],
            )
            return int(cursor.fetchone()[0])

    def rows(model: Any) -> int:
        return model.objects.count()

    main = size(Step, StepMetrics)
    detail = size(Message, ProviderTrace)
    traced = rows(ProviderTrace)
    rollups = size(StepRollupHour, StepRollupDay, SubjectRollupHour, SubjectRollupDay, ErrorRollupHour, ErrorRollupDay)
    steps = max(steps, 1)
    return {
        "per_step": (main + detail) / steps,
        "steps_and_metrics_per_step": main / steps,
        "messages_and_traces_per_traced_step": detail / max(traced, 1),
        "per_step_all_detailed": main / steps + detail / max(traced, 1),
        "rollups_per_step": rollups / steps,
        "runs_per_step": size(Run) / steps,
        "total_gb": (main + detail + rollups + size(Run)) / 1e9,
    }


def delete_one_user(organization: Any) -> dict[str, Any]:
    """Delete the end user with about 1,000 steps (the closest): deletion_create + deletion_run, timed."""
    from django.db import connection

    from steps.deletion import deletion_create, deletion_run
    from steps.models import Step

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT user_id, count(*) FROM {Step._meta.db_table} WHERE organization_id = %s "
            "AND user_id IS NOT NULL GROUP BY user_id ORDER BY abs(count(*) - 1000), user_id LIMIT 1",
            [organization.pk],
        )
        user_id, count = cursor.fetchone()
    started = time.perf_counter()
    job = deletion_create(organization=organization, params={"user_id": user_id})
    job = deletion_run(job_id=job.pk)
    seconds = time.perf_counter() - started
    left = Step.objects.filter(organization=organization, user_id=user_id).count()
    print(f"deleted end user {user_id}: {job.steps_deleted:,} steps ({count:,} matched), {job.messages_deleted:,} "
          f"messages, {job.provider_traces_deleted:,} provider traces, {job.runs_deleted:,} runs in {seconds:.2f} s; "
          f"status {job.status}, {left} steps of that user left", flush=True)  # fmt: skip
    return {"user_id": user_id, "steps": job.steps_deleted, "seconds": seconds, "left": left}


def drop_a_month(organization: Any) -> dict[str, Any] | None:
    """Retention of 60 days, applied as of the moment that puts the cutoff on a partition bound about 30 days after
    the oldest step: those partitions are dropped whole. Retention is then set back to keep forever."""
    from django.db.models import Min

    import steps.partitions as partitions
    import steps.retention as retention
    from accounts.services import retention_set
    from steps.models import Step
    from steps.partitions import is_partitioned, partition_floor, partition_interval
    from steps.retention import retention_apply

    oldest = Step.objects.filter(organization=organization).aggregate(m=Min("created_at"))["m"]
    now = datetime.now(UTC)
    if oldest is None or now - oldest < timedelta(days=45):
        print("retention: less than 45 days of steps here, not measured", flush=True)
        return None
    bound = oldest + timedelta(days=30)
    if is_partitioned():
        bound = partition_floor(bound + partition_interval() / 2)  # the nearest partition bound
    days = 60
    as_of = bound + timedelta(days=days)
    retention_set(organization=organization, days=days)
    drops: list[float] = []
    detaches: list[float] = []
    started = time.perf_counter()
    # partitions_drop (as steps.retention calls it): detach, count, drop; partitions_detach: out of the tables.
    with _timing(retention, "partitions_drop", drops), _timing(partitions, "partitions_detach", detaches):
        record = retention_apply(now=as_of)
    seconds = time.perf_counter() - started
    retention_set(organization=organization, days=None)
    print(f"retention as of {as_of:%Y-%m-%d %H:%M} (cutoff {bound:%Y-%m-%d %H:%M}): {record.steps_removed:,} steps, "
          f"{record.messages_removed:,} messages, {record.provider_traces_removed:,} provider traces, "
          f"{record.runs_removed:,} runs; {len(record.partitions_dropped)} partition intervals detached in "
          f"{sum(detaches):.2f} s, detached, counted and dropped in {sum(drops):.2f} s; {seconds:.2f} s in all",
          flush=True)  # fmt: skip
    return {"steps": record.steps_removed, "runs": record.runs_removed, "partitions": len(record.partitions_dropped),
            "seconds": seconds, "drop_seconds": sum(drops), "detach_seconds": sum(detaches)}  # fmt: skip


class _timing:
    """Wraps `module.name` (a function another module calls through that module) to time each call into `into`."""

    def __init__(self, module: Any, name: str, into: list[float]) -> None:
        self.module, self.name, self.into = module, name, into

    def __enter__(self) -> None:
        self.original = original = getattr(self.module, self.name)
        into = self.into

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - started)

        setattr(self.module, self.name, timed)

    def __exit__(self, *exc: object) -> None:
        setattr(self.module, self.name, self.original)


if __name__ == "__main__":
    main()
