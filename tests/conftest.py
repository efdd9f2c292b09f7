"""Shared fixtures. In CI (CI=true) the suite runs twice (.ci/run): on PostgreSQL with Redis, where a missing
service fails, and on the embedded SQLite default (STEPLENS_TEST_DATABASE=sqlite, `make test-sqlite`), where the
PostgreSQL-only tests are deselected."""

import os
import socket
from urllib.parse import urlparse

import pytest
from django.conf import settings
from pytest_django.plugin import validate_django_db
from rest_framework.test import APIClient

from accounts.services import api_key_create
from tests.factories import OrganizationFactory

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# Which database the run is for, checked against DATABASE_URL so that neither pass runs on the other's by mistake.
# CI means PostgreSQL unless the SQLite pass is asked for by name; on a laptop either is fine (SQLite by default).
ENGINES = {"postgresql": "django.db.backends.postgresql", "sqlite": "django.db.backends.sqlite3"}
TEST_DATABASE = os.environ.get("STEPLENS_TEST_DATABASE", "postgresql" if IN_CI else "")
SQLITE_PASS = TEST_DATABASE == "sqlite"


def require_service(name: str, reason: str) -> None:
    """Fail in CI, skip elsewhere: a test that needs a service must not silently pass without it."""
    message = f"{name} is required for this test: {reason}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def pytest_sessionstart(session: pytest.Session) -> None:
    if TEST_DATABASE and TEST_DATABASE not in ENGINES:
        pytest.exit(f"STEPLENS_TEST_DATABASE={TEST_DATABASE}: use one of {', '.join(ENGINES)}", returncode=3)
    if SQLITE_PASS and settings.DATABASES["default"]["ENGINE"] != ENGINES["sqlite"]:
        pytest.exit("STEPLENS_TEST_DATABASE=sqlite: unset DATABASE_URL (`make test-sqlite` does)", returncode=3)
    if TEST_DATABASE == "postgresql" and settings.DATABASES["default"]["ENGINE"] != ENGINES["postgresql"]:
        pytest.exit(
            "CI runs on PostgreSQL: set DATABASE_URL=postgres://... (or STEPLENS_TEST_DATABASE=sqlite for the "
            "SQLite pass)",
            returncode=3,
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the `postgres` fixture are marked `postgres`, as are those that start PostgreSQL servers of
    their own (marked in their module). The SQLite pass deselects them: they run in the PostgreSQL pass."""
    for item in items:
        if "postgres" in item.fixturenames:
            item.add_marker(pytest.mark.postgres)
        _allow_replica_mirror(item)
    if not SQLITE_PASS:
        return
    kept = [item for item in items if item.get_closest_marker("postgres") is None]
    deselected = [item for item in items if item.get_closest_marker("postgres") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


_DB_FIXTURES = {"db", "transactional_db", "live_server", "django_db_reset_sequences", "django_db_serialized_rollback"}


def _allow_replica_mirror(item: pytest.Item) -> None:
    """With DATABASE_REPLICA_URL the runner makes `replica` a mirror of the test database (config.db_router); a
    test that uses the database may use that alias too, as the router sends it reads outside transactions."""
    if "replica" not in settings.DATABASES:
        return
    marker = item.get_closest_marker("django_db")
    if marker is None and not _DB_FIXTURES & set(getattr(item, "fixturenames", ())):
        return
    transaction, reset_sequences, databases, serialized_rollback, available_apps = (
        validate_django_db(marker) if marker else (False, False, None, False, None)
    )
    if databases != "__all__":
        databases = sorted({*(databases or ["default"]), "replica"})
    item.add_marker(
        pytest.mark.django_db(
            transaction=transaction, reset_sequences=reset_sequences, databases=databases,
            serialized_rollback=serialized_rollback, available_apps=available_apps,
        ),
        append=False,
    )  # fmt: skip


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
