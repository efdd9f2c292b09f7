"""`manage.py create_api_key --organization NAME [--project P] [--scope S]`: prints the new key alone on its last
line (the project is created if needed)."""

from django.core.management.base import BaseCommand, CommandParser

from accounts.audit import Actor
from accounts.models import ApiKeyScope
from accounts.services import api_key_create, organization_get_or_create, project_get_or_create


class Command(BaseCommand):
    help = "Create an API key for an organization (created if needed). The key is printed once, on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--organization", required=True, help="Organization name.")
        parser.add_argument("--name", default="", help="A label for the key.")
        parser.add_argument("--project", default=None, help="Limit the key to this project (name; created if needed).")
        parser.add_argument(
            "--scope", default=ApiKeyScope.FULL, choices=ApiKeyScope.values, help="ingest, read or full (default)."
        )

    def handle(self, *args: object, **options: object) -> None:
        organization = organization_get_or_create(name=str(options["organization"]))
        project = (
            project_get_or_create(organization=organization, name=str(options["project"]))
            if options["project"]
            else None
        )
        api_key, raw_key = api_key_create(
            organization=organization,
            name=str(options["name"]),
            scope=str(options["scope"]),
            project=project,
            actor=Actor(label="manage.py create_api_key"),
        )
        self.stderr.write(
            f"Created API key {api_key.prefix}… (scope {api_key.scope}"
            f"{f', project {project.name}' if project else ''}) for organization {organization.name} "
            f"({organization.pk})."
        )
        self.stderr.write("Store it now: it is not kept and cannot be shown again.")
        self.stdout.write(raw_key)
