"""Deleting one end user's steps (DELETE /v1/steps?user_id=...: steps.deletion), timed per phase (issue 13).

Picks the end users of --organization with about 1,000 steps (the closest to it first), deletes each with
deletion_create + deletion_run as bench/scale.py's delete_one_user does, and prints per user the time, the job's
counts, the SQL statements run, and the time spent in each phase of steps.deletion (the module functions named in
PHASES that exist: an older version may have other ones; the rest is "other"). It deletes data: use a seeded
database of your own, e.g.

    createdb -h 127.0.0.1 -U postgres mine_seed
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mine_seed .venv/bin/python manage.py migrate
    DATABASE_URL=... .venv/bin/python manage.py seed_steps --count 500000 --days 90 --users 500 \\
        --detail-share 0.2 --organization scale
    DATABASE_URL=... .venv/bin/python bench/deletion.py --users 3

--module-file measures another version of steps/deletion.py (`git show <rev>:steps/deletion.py > old.py`).
"""

import argparse
import importlib.util
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# steps.deletion functions timed as phases, when the measured version has them.
PHASES = (
    "_lock_batch",
    "_subtract_rollups",
    "_delete_rows",
    "errors_rollups_refresh",
    "_recompute_errors",
    "_delete_runs_left_empty",
    "runs_delete_empty",
)


def _module(path: str | None) -> Any:
    if not path:
        from steps import deletion

        return deletion
    spec = importlib.util.spec_from_file_location("steps.deletion_measured", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(module: Any, seconds: dict[str, float]) -> None:
    """Wrap the module's phase functions so that each call adds its time to `seconds`."""
    for name in PHASES:
        real = getattr(module, name, None)
        if real is None:
            continue

        def wrapper(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _real(*args, **kwargs)
            finally:
                seconds[_name] += time.perf_counter() - started

        setattr(module, name, wrapper)


def _users(organization: Any, n: int) -> list[tuple[str, int]]:
    from django.db import connection

    from steps.models import Step

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT user_id, count(*) FROM {Step._meta.db_table} WHERE organization_id = %s "
            "AND user_id IS NOT NULL GROUP BY user_id ORDER BY abs(count(*) - 1000), user_id LIMIT %s",
            [organization.pk, n],
        )
        return cursor.fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--organization", default="scale", help="The seeded organization's name.")
    parser.add_argument("--users", type=int, default=3, help="End users to delete, one job each.")
    parser.add_argument("--batch-size", type=int, default=None, help="Default: STEPLENS_DELETION_BATCH_SIZE.")
    parser.add_argument("--module-file", default=None, help="Another version of steps/deletion.py to measure.")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    import django

    django.setup()
    from django.db import connection

    from accounts.models import Organization
    from steps.models import Step

    if connection.vendor != "postgresql":
        sys.exit("Run against PostgreSQL: DATABASE_URL=postgres://...")
    organization = Organization.objects.get(name=args.organization)
    module = _module(args.module_file)
    print(f"steps: {Step.objects.filter(organization=organization).count():,}; code: {args.module_file or 'HEAD'}")
    totals: list[float] = []
    for user_id, count in _users(organization, args.users):
        seconds: dict[str, float] = defaultdict(float)
        _timed(module, seconds)
        statements = [0]

        def count_statements(
            execute: Any, sql: str, params: Any, many: bool, context: Any, n: list = statements
        ) -> Any:
            n[0] += 1
            return execute(sql, params, many, context)

        started = time.perf_counter()
        with connection.execute_wrapper(count_statements):
            job = module.deletion_create(organization=organization, params={"user_id": user_id})
            job = module.deletion_run(job_id=job.pk, batch_size=args.batch_size)
        total = time.perf_counter() - started
        module = _module(args.module_file)  # unwrapped again for the next user
        totals.append(total)
        left = Step.objects.filter(organization=organization, user_id=user_id).count()
        other = total - sum(seconds.values())
        phases = ", ".join(f"{name} {s:.2f}" for name, s in seconds.items())
        print(f"{user_id}: {job.steps_deleted:,} steps ({count:,} matched), {job.messages_deleted:,} messages, "
              f"{job.provider_traces_deleted:,} provider traces, {job.runs_deleted:,} runs in {total:.2f} s "
              f"({statements[0]} statements; {phases}, other {other:.2f}); {job.status}, {left} left",
              flush=True)  # fmt: skip
    if totals:
        print(f"mean {sum(totals) / len(totals):.2f} s over {len(totals)} users")


if __name__ == "__main__":
    main()
