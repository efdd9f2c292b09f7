"""`manage.py create_api_key --organization NAME`: prints the new key alone on its last line."""

from django.core.management.base import BaseCommand, CommandParser

from accounts.services import api_key_create, organization_get_or_create


class Command(BaseCommand):
    help = "Create an API key for an organization (created if needed). The key is printed once, on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--organization", required=True, help="Organization name.")
        parser.add_argument("--name", default="", help="A label for the key.")

    def handle(self, *args: object, **options: object) -> None:
        organization = organization_get_or_create(name=str(options["organization"]))
        api_key, raw_key = api_key_create(organization=organization, name=str(options["name"]))
        self.stderr.write(
            f"Created API key {api_key.prefix}… for organization {organization.name} ({organization.pk})."
        )
        self.stderr.write("Store it now: it is not kept and cannot be shown again.")
        self.stdout.write(raw_key)
