"""`manage.py seed_demo`: demo data made by real agent runs on the scripted provider (idempotent)."""

from django.core.management.base import BaseCommand, CommandParser

from accounts.management.commands.demo_setup import DEMO_ORGANIZATION
from accounts.services import organization_get_or_create
from runner.demo import seed_demo
from steps.models import Step


class Command(BaseCommand):
    help = "Run the demo agents a few hundred times on the scripted provider and spread the runs over 7 days."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--organization", default=DEMO_ORGANIZATION)
        parser.add_argument("--runs", type=int, default=300)
        parser.add_argument("--seed", type=int, default=7)
        parser.add_argument("--force", action="store_true", help="Seed even if demo steps already exist.")

    def handle(self, *args: object, **options: object) -> None:
        organization = organization_get_or_create(name=str(options["organization"]))
        existing = Step.objects.filter(
            organization=organization, agent__tags__isnull=False, run__request_id__startswith="req-demo-"
        ).exists()
        if existing and not options["force"]:
            self.stdout.write("Demo data is already there (use --force to add more).")
            return
        self.stdout.write(f"Seeding demo data: {options['runs']} real runs on the scripted provider…")
        count = seed_demo(organization=organization, runs=int(options["runs"]), seed=int(options["seed"]),
                          log=self.stdout.write)  # fmt: skip
        steps = Step.objects.filter(organization=organization).count()
        self.stdout.write(f"Done: {count} runs, {steps} steps in organization '{organization.name}'.")
