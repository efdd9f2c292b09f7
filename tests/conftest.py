"""Shared fixtures. In CI (CI=true) the suite must run on PostgreSQL with Redis: a missing service fails."""

import os
import socket
from urllib.parse import urlparse

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from accounts.services import api_key_create
from tests.factories import OrganizationFactory

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_service(name: str, reason: str) -> None:
    """Fail in CI, skip elsewhere: a test that needs a service must not silently pass without it."""
    message = f"{name} is required for this test: {reason}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def pytest_sessionstart(session: pytest.Session) -> None:
    if IN_CI and settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.exit("CI must run on PostgreSQL: set DATABASE_URL=postgres://...", returncode=3)


@pytest.fixture
def postgres() -> None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        require_service("PostgreSQL", "set DATABASE_URL=postgres://...")


def _reachable(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_url() -> str:
    url = settings.TEST_CELERY_BROKER_URL
    if not url.startswith("redis://"):
        require_service("Redis", "set CELERY_BROKER_URL=redis://127.0.0.1:6379/15")
    if not _reachable(url):
        require_service("Redis", f"{url} is not reachable")
    return url


@pytest.fixture
def organization():
    return OrganizationFactory()


@pytest.fixture
def api_key(organization) -> str:
    _, raw_key = api_key_create(organization=organization, name="test")
    return raw_key


@pytest.fixture
def api_client(api_key) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    return client
