"""`manage.py prune_alert_history`: remove old alert history now (what Celery beat runs every hour)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from monitors.retention import alert_history_prune


class Command(BaseCommand):
    help = (
        "Remove alert events, deliveries and delivery attempts older than STEPLENS_ALERT_RETENTION_DAYS "
        "(each monitor's latest event is kept)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, help="Use this many days instead of STEPLENS_ALERT_RETENTION_DAYS.")

    def handle(self, *args: Any, **options: Any) -> None:
        pruned = alert_history_prune(days=options["days"])
        if pruned.cutoff is None:
            self.stdout.write("Alert retention is off (STEPLENS_ALERT_RETENTION_DAYS is empty): nothing removed.")
            return
        self.stdout.write(
            f"Removed {pruned.events} alert events, {pruned.deliveries} deliveries and {pruned.attempts} attempts "
            f"older than {pruned.cutoff.isoformat()}."
        )
