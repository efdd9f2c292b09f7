"""Per-step overhead of the agent loop and runs per second with one and two workers (PostgreSQL + Redis).

Steplens's own work per step = the step's wall time minus the provider call and the tools, i.e. the
recording (step rows, metrics, messages, provider trace, rollups), the run stream and the spans.
The scripted provider answers instantly, through the real SDK clients.

    .venv/bin/python bench/runs.py [--runs 200] [--database postgres://postgres@127.0.0.1:5432/steplens_bench]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _setup(database_url: str, broker_url: str) -> None:
    import psycopg

    base, _, name = database_url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings.local",
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        REDIS_URL=broker_url,
        CELERY_TASK_ALWAYS_EAGER="false",
        DJANGO_DEBUG="false",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def overhead(organization, runs: int) -> None:
    from agents.services import agent_create
    from runner.loop import run_execute
    from runner.services import run_start
    from steps.models import StepMetrics

    rows = []
    for label, handle, tools in (
        ("echo (1 step, no tools)", "scripted/echo", []),
        ("weather (2 steps, 1 tool)", "scripted/weather-anthropic", ["get_weather"]),
    ):
        agent = agent_create(
            organization=organization, name=f"bench-{label.split()[0]}-{time.time_ns()}", model_handle=handle,
            tools=tools,
        )  # fmt: skip
        run_ids = []
        for index in range(runs):
            run = run_start(
                organization=organization, agent=agent, request_id=f"req-bench-{index}",
                messages=[{"role": "user", "content": [{"type": "text", "text": "What's the weather in Paris?"}]}],
            )  # fmt: skip
            run_execute(run_id=run.pk)
            run_ids.append(run.pk)
        metrics = StepMetrics.objects.filter(step__run_id__in=run_ids[5:])  # the first runs warm the SDKs up
        own_ms = [(m.step_ns - m.llm_request_ns - (m.tool_execution_ns or 0)) / 1e6 for m in metrics]
        llm_ms = [m.llm_request_ns / 1e6 for m in metrics]
        rows.append((label, len(own_ms), statistics.median(own_ms), _pct(own_ms, 0.95), statistics.median(llm_ms)))
    print("\nSteplens's own work per step (step wall time minus provider call and tools)")
    print(f"{'scenario':<28}{'steps':>7}{'p50 ms':>10}{'p95 ms':>10}{'provider p50 ms':>18}")
    for label, count, p50, p95, llm in rows:
        print(f"{label:<28}{count:>7}{p50:>10.2f}{p95:>10.2f}{llm:>18.2f}")


def throughput(organization, runs: int, workers: int) -> float:
    from django.db import transaction

    from agents.models import Run, RunStatus
    from agents.services import agent_create
    from runner.services import run_enqueue, run_start

    agent = agent_create(
        organization=organization, name=f"bench-throughput-{workers}-{time.time_ns()}",
        model_handle="scripted/weather-openai", tools=["get_weather"],
    )  # fmt: skip
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-P",
                "prefork",
                "-c",
                "1",
                "-Q",
                "runs",
                "-n",
                f"bench{i}@%h",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "ERROR",
            ],
            cwd=ROOT,
            env={**os.environ, "OTEL_SDK_DISABLED": "true"},
        )
        for i in range(workers)
    ]
    try:
        # Warm each worker up (SDK imports) before the clock starts.
        warm = []
        for _ in range(workers * 2):
            with transaction.atomic():
                run = run_start(organization=organization, agent=agent, request_id="req-warm", messages=_user("hi"))
                run_enqueue(run=run)
            warm.append(run.pk)
        while Run.objects.filter(pk__in=warm, status=RunStatus.COMPLETED).count() < len(warm):
            time.sleep(0.2)
        started = time.monotonic()
        ids = []
        for index in range(runs):
            with transaction.atomic():
                run = run_start(
                    organization=organization, agent=agent, request_id=f"req-tp-{index}", messages=_user("Weather?")
                )
                run_enqueue(run=run)
            ids.append(run.pk)
        while Run.objects.filter(pk__in=ids, status__in=[RunStatus.COMPLETED, RunStatus.FAILED]).count() < runs:
            time.sleep(0.05)
        return runs / (time.monotonic() - started)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--database", default="postgres://postgres@127.0.0.1:5432/steplens_bench")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    _setup(args.database, args.broker)

    from accounts.services import organization_get_or_create

    organization = organization_get_or_create(name="bench-runs")
    overhead(organization, args.runs)
    print("\nRuns per second through Celery workers over Redis (2 steps and 1 tool call per run)")
    print(f"{'workers':<10}{'runs':>6}{'runs/s':>10}")
    for workers in (1, 2):
        rate = throughput(organization, args.runs, workers)
        print(f"{workers:<10}{args.runs:>6}{rate:>10.1f}")


if __name__ == "__main__":
    main()
