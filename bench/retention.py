"""Time retention the way bench/scale.py's drop_a_month does, per phase.

Retention of 60 days applied as of the moment that puts the cutoff on a partition bound about 30 days after the
oldest step of the organization, so that those partitions are dropped whole; then the runs left empty go in
batches. Prints the time of the partition drops (the whole drop phase: choosing the intervals, counting and
dropping), of each partitions_drop call, of the step batches and of the run batches. Retention is set back to keep
forever afterwards. It removes data: run it on a copy.

    DATABASE_URL=postgres://... .venv/bin/python bench/retention.py --organization scale
"""

import argparse
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")


def main() -> None:
    import django

    django.setup()
    from django.db.models import Min

    import steps.retention as retention
    from accounts.models import Organization
    from accounts.services import retention_set
    from steps.models import Step
    from steps.partitions import is_partitioned, partition_floor, partition_interval

    parser = argparse.ArgumentParser()
    parser.add_argument("--organization", default="scale", help="organization name or id")
    parser.add_argument("--days", type=int, default=60)
    args = parser.parse_args()
    organization = Organization.objects.filter(name=args.organization).first() or Organization.objects.get(
        pk=args.organization
    )
    oldest = Step.objects.filter(organization=organization).aggregate(m=Min("created_at"))["m"]
    bound = oldest + timedelta(days=30)
    if is_partitioned():
        bound = partition_floor(bound + partition_interval() / 2)
    as_of = bound + timedelta(days=args.days)

    timings: dict[str, list[float]] = {}

    def timed(name: str, function: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*a, **kw)
            finally:
                timings.setdefault(name, []).append(time.perf_counter() - started)

        return wrapper

    def timed_batches(function: Any) -> Any:
        def wrapper(queryset: Any, **kw: Any) -> Iterator[dict[str, int]]:
            name = f"batches {queryset.model._meta.label}"
            iterator = function(queryset, **kw)
            while True:
                started = time.perf_counter()
                try:
                    counts = next(iterator)
                except StopIteration:
                    timings.setdefault(name, []).append(time.perf_counter() - started)
                    return
                timings.setdefault(name, []).append(time.perf_counter() - started)
                yield counts

        return wrapper

    originals = {
        name: getattr(retention, name) for name in ("_drop_partitions", "partitions_drop", "_delete_in_batches")
    }
    retention._drop_partitions = timed("drop phase (_drop_partitions)", originals["_drop_partitions"])
    retention.partitions_drop = timed("partitions_drop calls", originals["partitions_drop"])
    retention._delete_in_batches = timed_batches(originals["_delete_in_batches"])
    retention_set(organization=organization, days=args.days)
    started = time.perf_counter()
    try:
        record = retention.retention_apply(now=as_of)
    finally:
        for name, function in originals.items():
            setattr(retention, name, function)
        retention_set(organization=organization, days=None)
    seconds = time.perf_counter() - started
    print(f"retention as of {as_of:%Y-%m-%d %H:%M} (cutoff {bound:%Y-%m-%d %H:%M}) at {datetime.now(UTC):%H:%M}")
    print(f"  removed: {record.steps_removed:,} steps, {record.metrics_removed:,} metrics, "
          f"{record.messages_removed:,} messages, {record.provider_traces_removed:,} provider traces, "
          f"{record.runs_removed:,} runs; {len(record.partitions_dropped)} partition intervals")  # fmt: skip
    for dropped in record.partitions_dropped:
        print(f"    {dropped}")
    for name, values in timings.items():
        print(f"  {name}: {sum(values):.3f} s in {len(values)} calls (max {max(values):.3f} s)")
    print(f"  in all: {seconds:.2f} s")


if __name__ == "__main__":
    main()
