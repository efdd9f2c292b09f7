"""How long runs take to end after their worker dies, on Redis and on RabbitMQ (not a test: prints a table).

For each broker: a broker of our own (free port), a prefork worker and Celery beat with the production settings,
RUNS `scripted/slow-echo` runs; once they stream, the worker tree is SIGKILLed (pool children too, like a machine
dying), a new worker starts, and the time until every run is final is measured, with the runs' and steps' states.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/h3bench .venv/bin/python bench/broker_recovery.py

The database is created and migrated if needed. Options: --runs N, --brokers redis,rabbitmq, and any
STEPLENS_* setting as NAME=VALUE (e.g. STEPLENS_STALE_RUN_SECONDS=30) for the worker and beat processes.
"""

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from django.core.management import call_command  # noqa: E402
from kombu import Connection  # noqa: E402

from agents.models import Run  # noqa: E402
from agents.services import agent_create  # noqa: E402
from config.celery import app as celery_app  # noqa: E402
from runner.services import run_start  # noqa: E402
from runner.tasks import run_agent  # noqa: E402
from steps.models import Step, StepProgression  # noqa: E402
from tests.factories import OrganizationFactory  # noqa: E402
from tests.faults.runs_support import (  # noqa: E402
    OwnRabbit,
    OwnRedis,
    count,
    database_url,
    kill_tree,
    start_runs_worker,
    start_service,
    stop_services,
    wait_until,
    worker_env,
)


def _ensure_database() -> None:
    from django.db import connection

    db = connection.settings_dict
    if "postgresql" not in db["ENGINE"]:
        sys.exit("set DATABASE_URL=postgres://... (the workers are separate processes)")
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname="postgres", autocommit=True
    ) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone():
            admin.execute(f'CREATE DATABASE "{db["NAME"]}"')
    call_command("migrate", verbosity=0)


def measure(broker_name: str, *, runs: int, settings: dict[str, str], logs: Path) -> dict[str, object]:
    redis = OwnRedis()
    redis.start()
    rabbit = OwnRabbit() if broker_name == "rabbitmq" else None
    if rabbit is not None:
        rabbit.start()
    broker_url = rabbit.url if rabbit else redis.url
    env = worker_env(database_url(), broker_url=broker_url, redis_url=redis.url, **settings)
    env["CELERY_BEAT_SCHEDULE_FILENAME"] = str(logs / f"beat-{broker_name}")
    services = []
    try:
        first = start_runs_worker(env, logs, name=f"{broker_name}-first")
        beat = start_service(
            f"{broker_name}-beat", [str(ROOT / ".venv/bin/celery"), "-A", "config", "beat", "-l", "INFO"], env, logs
        )
        services += [first, beat]
        organization = OrganizationFactory(name=f"bench-{broker_name}-{secrets.token_hex(4)}")
        agent = agent_create(organization=organization, name="bench", model_handle="scripted/slow-echo")
        text = "please echo this long answer slowly " * 60
        run_ids = []
        celery_app.conf.update(task_always_eager=False, broker_url=broker_url)  # this process only sends
        with Connection(broker_url) as connection:
            for index in range(runs):
                run = run_start(
                    organization=organization, agent=agent, request_id=f"bench-{broker_name}-{index}",
                    messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
                )  # fmt: skip
                run_agent.apply_async(kwargs={"run_id": run.pk}, connection=connection)
                run_ids.append(run.pk)
        streaming = Step.objects.filter(run_id__in=run_ids, progression=StepProgression.STREAM_RECEIVED)
        wait_until(lambda: streaming.filter(status="pending").exists(), timeout=120, what="a run streaming")
        in_flight = streaming.filter(status="pending").count()
        kill_tree(first)
        killed_at = time.monotonic()
        second = start_runs_worker(env, logs, name=f"{broker_name}-second")
        services.append(second)
        unfinished = Run.objects.filter(pk__in=run_ids).exclude(status__in=["completed", "failed", "cancelled"])
        wait_until(lambda: not unfinished.exists(), timeout=1800, interval=0.5, what="every run final")
        seconds = time.monotonic() - killed_at
        counts = count(run_ids)
        lost_steps = Step.objects.filter(run_id__in=run_ids, error_type="worker_lost").count()
        return {
            "broker": broker_name,
            "runs": runs,
            "in_flight": in_flight,
            "seconds": seconds,
            "runs_final": dict(sorted(counts.run_states.items())),
            "steps": dict(sorted(counts.step_states.items())),
            "worker_lost": lost_steps,
            "pending": counts.steps_pending,
            "dup": counts.duplicate_attempts,
        }
    finally:
        stop_services(services)
        redis.stop()
        if rabbit is not None:
            rabbit.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("settings", nargs="*", help="NAME=VALUE settings for the worker and beat")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.settings)
    _ensure_database()
    logs = Path(tempfile.mkdtemp(prefix="steplens-broker-bench-"))
    shown = settings or "production defaults"
    print(f"settings: {shown}; logs in {logs}")
    print(
        f"{'broker':<9} {'runs':>4} {'in flight':>9} {'recovery s':>10}  "
        "runs final / steps / worker_lost / pending / dup"
    )
    for broker_name in args.brokers.split(","):
        row = measure(broker_name, runs=args.runs, settings=settings, logs=logs)
        print(
            f"{row['broker']:<9} {row['runs']:>4} {row['in_flight']:>9} {row['seconds']:>10.1f}  "
            f"{row['runs_final']} / {row['steps']} / {row['worker_lost']} / {row['pending']} / {row['dup']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
