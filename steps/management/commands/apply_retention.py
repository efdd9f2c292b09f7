"""`manage.py apply_retention [--rollups] [--batch-size N]`: apply every retention now (what the periodic task does).

Without `--rollups` the usage, errors and subject rollups are kept, so reports over old windows still add up;
with it, rollup rows whose whole hour or day is older than the cutoff go too.
"""

from django.core.management.base import BaseCommand, CommandParser

from steps.retention import retention_apply


class Command(BaseCommand):
    help = "Remove raw step records older than the retention of their project or organization, and record the run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rollups", action="store_true", help="Purge rollup rows older than the cutoff too.")
        parser.add_argument("--batch-size", type=int, default=None, help="Steps per transaction (default: setting).")

    def handle(self, *args: object, **options: object) -> None:
        run = retention_apply(purge_rollups=bool(options["rollups"]), batch_size=options["batch_size"])  # type: ignore[arg-type]
        self.stdout.write(
            f"retention run {run.pk}: {len(run.policies)} policies; removed {run.steps_removed} steps, "
            f"{run.metrics_removed} metrics, {run.messages_removed} messages, "
            f"{run.provider_traces_removed} provider traces, {run.runs_removed} runs, "
            f"{run.rollup_rows_removed} rollup rows"
        )
