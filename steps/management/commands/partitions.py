"""`manage.py partitions [--exact] [--ensure]`: list the partitions of the steps tables (PostgreSQL) with their
bounds and rows; `--ensure` first creates those of the current interval and STEPLENS_PARTITION_AHEAD ahead (what
the periodic task does), `--ensure-from DATE` also those back to DATE (before a bulk load of old data)."""

from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from steps.partitions import (
    is_partitioned,
    partition_floor,
    partitions_ensure,
    partitions_ensure_ahead,
    partitions_list,
)


class Command(BaseCommand):
    help = "List (and create ahead) the time partitions of steps, metrics, messages and provider traces."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--exact", action="store_true", help="Count rows (else PostgreSQL's estimates).")
        parser.add_argument("--ensure", action="store_true", help="Create the partitions ahead first.")
        parser.add_argument("--ensure-from", default=None, help="Also create partitions back to this date (ISO).")

    def handle(self, *args: object, **options: object) -> None:
        if not is_partitioned():
            raise CommandError("The steps tables are not partitioned here (SQLite, or PostgreSQL before steps 0012).")
        now = timezone.now()
        created: list[str] = []
        if options["ensure_from"]:
            start = datetime.fromisoformat(str(options["ensure_from"]))
            created += partitions_ensure(start if start.tzinfo else start.replace(tzinfo=UTC), partition_floor(now))
        if options["ensure"] or options["ensure_from"]:
            created += partitions_ensure_ahead(now=now)
            self.stdout.write(f"created {len(created)} partitions" + (f": {', '.join(created)}" if created else ""))
        for partition in partitions_list(exact=bool(options["exact"])):
            bounds = (
                "DEFAULT"
                if partition.is_default
                else f"[{partition.lower:%Y-%m-%d %H:%M}, {partition.upper:%Y-%m-%d %H:%M}) UTC"
            )
            rows = "?" if partition.rows < 0 else str(partition.rows)
            self.stdout.write(f"{partition.name:<40} {bounds:<40} {rows:>12} rows")
