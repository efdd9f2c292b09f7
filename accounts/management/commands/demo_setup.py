"""`manage.py demo_setup`: the admin user, a viewer of a second organization and the API key `make demo` prints
(idempotent): the superuser sees every organization, the viewer only theirs, so the scoping is visible."""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from accounts.models import Role
from accounts.selectors import api_key_authenticate
from accounts.services import api_key_create, membership_set, organization_get_or_create, user_get_or_create

DEMO_ORGANIZATION = "demo"
SECOND_ORGANIZATION = "demo-second"
VIEWER = "viewer"


class Command(BaseCommand):
    help = "Create the demo admin user and an API key for the demo organization, and print both."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument(
            "--base-url", default="http://127.0.0.1:8000", help="Where the demo is served (`make demo PORT=...`)."
        )
        parser.add_argument(
            "--credentials-file",
            default=str(Path(settings.BASE_DIR) / ".demo-credentials"),
            help="Where the credentials are remembered between `make demo` runs (git-ignored).",
        )

    def handle(self, *args: object, **options: object) -> None:
        path = Path(str(options["credentials_file"]))
        username = str(options["username"])
        base_url = str(options["base_url"]).rstrip("/")
        remembered = dict(
            line.split("=", 1) for line in path.read_text().splitlines() if "=" in line
        ) if path.exists() else {}  # fmt: skip

        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        password = remembered.get("password")
        if user is None or password is None or not user.check_password(password):
            password = secrets.token_urlsafe(12)
            user = user or user_model(username=username, email=f"{username}@localhost")
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()

        organization = organization_get_or_create(name=DEMO_ORGANIZATION)
        second = organization_get_or_create(name=SECOND_ORGANIZATION)
        viewer_password = remembered.get("viewer_password")
        viewer = user_model.objects.filter(username=VIEWER).first()
        if viewer is None or viewer_password is None or not viewer.check_password(viewer_password):
            viewer_password = secrets.token_urlsafe(12)
            viewer, _ = user_get_or_create(username=VIEWER, password=viewer_password)
        membership_set(organization=second, user=viewer, role=Role.VIEWER)
        api_key = remembered.get("api_key")

        if not api_key or api_key_authenticate(raw_key=api_key) is None:
            _, api_key = api_key_create(organization=organization, name="demo")
        path.write_text(
            f"username={username}\npassword={password}\napi_key={api_key}\nviewer_password={viewer_password}\n"
        )
        path.chmod(0o600)

        self.stdout.write("")
        self.stdout.write("Steplens demo")
        self.stdout.write(f"  admin:    {base_url}/admin/")
        self.stdout.write(f"  username: {username}")
        self.stdout.write(f"  password: {password}   (superuser: every organization)")
        self.stdout.write(f"  viewer:   {VIEWER} / {viewer_password}   (viewer of '{SECOND_ORGANIZATION}' only)")
        self.stdout.write(f"  API key:  {api_key}   (organization '{DEMO_ORGANIZATION}')")
        self.stdout.write(f"  try:      curl -H 'Authorization: Bearer {api_key}' {base_url}/v1/steps")
        self.stdout.write("")
