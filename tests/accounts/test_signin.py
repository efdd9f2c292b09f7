"""Sign-in hardening: failed sign-ins are throttled per account and per address (django-axes), signing out ends
the session, and production cookies are secure, HttpOnly and SameSite."""

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from accounts.models import AuditEvent, Role
from accounts.services import membership_set
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-test-password-1"
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def person(django_user_model):
    user = django_user_model.objects.create_user(username="pat", password=PASSWORD)
    membership_set(organization=OrganizationFactory(name="acme"), user=user, role=Role.VIEWER)
    return user


def _sign_in(client: Client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post(
        reverse("admin:login"), {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address
    )


def test_an_account_is_locked_after_repeated_failures_even_with_the_right_password(person):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _sign_in(client, "pat", "wrong").status_code == 200
    assert _sign_in(client, "pat", "wrong").status_code == 429  # the limit-th failure locks
    locked = _sign_in(client, "pat", PASSWORD, address="10.0.0.2")
    assert locked.status_code == 429 and "Too many failed sign-ins" in locked.content.decode()
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="auth.sign_in_failed").count() >= settings.AXES_FAILURE_LIMIT


def test_an_address_is_locked_after_failures_across_accounts(person):
    client = Client()
    for n in range(settings.AXES_FAILURE_LIMIT):
        _sign_in(client, f"guess-{n}", "wrong", address="10.9.9.9")
    assert _sign_in(client, "pat", PASSWORD, address="10.9.9.9").status_code == 429
    # Another address still signs in.
    assert _sign_in(Client(), "pat", PASSWORD, address="10.1.1.1").status_code == 302


def test_signing_out_ends_the_session(person):
    client = Client()
    assert _sign_in(client, "pat", PASSWORD).status_code == 302
    session_key = client.session.session_key
    client.post(reverse("admin:logout"))
    from django.contrib.sessions.models import Session

    assert not Session.objects.filter(session_key=session_key).exists()
    assert client.get(reverse("admin:index")).status_code == 302


def test_production_cookies_are_secure_httponly_and_samesite():
    code = (
        "from django.conf import settings as s; "
        "print([getattr(s, f'{n}_{a}') for n in ('SESSION_COOKIE', 'CSRF_COOKIE') "
        "for a in ('SECURE', 'HTTPONLY', 'SAMESITE')], len(s.AUTH_PASSWORD_VALIDATORS))"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": "x" * 50,
        "DATABASE_URL": "postgres://u@127.0.0.1/x",
    }
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[True,", "True,", "'Lax',", "True,", "True,", "'Lax']", "4"]


def test_a_weak_password_is_refused_by_the_validators(person):
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        validate_password("password", person)


def test_demo_setup_prints_a_viewer_of_a_second_organization_who_sees_only_it(tmp_path):
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("demo_setup", "--credentials-file", str(tmp_path / "creds"), stdout=out)
    line = next(x for x in out.getvalue().splitlines() if x.strip().startswith("viewer:"))
    username, _, password = line.split()[1:4]
    client = Client()
    assert _sign_in(client, username, password).status_code == 302
    page = client.get(reverse("admin:dashboard")).content.decode()
    assert "demo-second" in page and ">demo<" not in page
    # Idempotent: the same credentials again.
    again = io.StringIO()
    call_command("demo_setup", "--credentials-file", str(tmp_path / "creds"), stdout=again)
    assert line in again.getvalue()
