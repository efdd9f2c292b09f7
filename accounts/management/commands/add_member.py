"""`manage.py add_member --organization NAME --username U --role ROLE [--password P] [--project NAME ...]`: the
first owner of an organization, or any member, without the console (the user and the organization are created if
needed); `--project` limits a member or viewer to those projects (created if needed)."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.audit import Actor
from accounts.models import Role
from accounts.services import (
    membership_set,
    membership_set_projects,
    organization_get_or_create,
    project_get_or_create,
    user_get_or_create,
)
from config.errors import ApplicationError


class Command(BaseCommand):
    help = "Add a person to an organization with a role, or change their role (creates the user if needed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--organization", required=True, help="Organization name (created if needed).")
        parser.add_argument("--username", required=True)
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument(
            "--password", default=None, help="Set this password (a new user without it cannot sign in)."
        )
        parser.add_argument("--email", default="")
        parser.add_argument(
            "--project", action="append", default=None,
            help="Limit a member or viewer to this project (repeat for several; created if needed).",
        )  # fmt: skip

    def handle(self, *args: object, **options: object) -> None:
        organization = organization_get_or_create(name=str(options["organization"]))
        password = options["password"]
        user, created = user_get_or_create(
            username=str(options["username"]), password=str(password) if password else None, email=str(options["email"])
        )
        try:
            membership = membership_set(
                organization=organization,
                user=user,
                role=str(options["role"]),
                actor=Actor(label="manage.py add_member"),
            )
            if options["project"] is not None:
                projects = [project_get_or_create(organization=organization, name=name) for name in options["project"]]
                membership_set_projects(
                    membership=membership, projects=projects, actor=Actor(label="manage.py add_member")
                )
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} {exc.extra}") from exc
        self.stdout.write(
            f"{'Created' if created else 'Updated'} user {user.get_username()}: "
            f"{membership.role} of {organization.name}."
        )
