"""`manage.py evaluate_monitors`: one evaluation cycle now (what Celery beat runs every minute)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q

from accounts.selectors import organization_list
from monitors.services import monitors_evaluate


class Command(BaseCommand):
    help = "Evaluate every enabled monitor once, record state changes and queue their notifications."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--organization", help="Only this organization's monitors (name or id).")

    def handle(self, *args: Any, **options: Any) -> None:
        organization = None
        if options["organization"]:
            wanted = options["organization"]
            organization = organization_list().filter(Q(name=wanted) | Q(pk=wanted)).first()
            if organization is None:
                raise CommandError(f"No organization named or with the id {wanted!r}.")
        report = monitors_evaluate(organization=organization)
        self.stdout.write(
            f"{report.monitors} monitors, {report.queries} reports, {report.events} alert events, "
            f"{report.deliveries} notifications queued in {report.seconds:.3f} s"
        )
        for error in report.errors:
            self.stderr.write(f"error: {error}")
