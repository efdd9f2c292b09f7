"""GET /healthz and GET /readyz: JSON, no authentication, the failing check named."""

import socket

import pytest

from ops import readiness

pytestmark = pytest.mark.django_db


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_healthz_answers_json_without_touching_the_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


def test_probes_need_no_api_key_and_refuse_other_methods_with_json(client):
    response = client.post("/healthz")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert client.head("/readyz").status_code == 200


def test_readyz_lists_each_check_when_ready(client):
    readiness.migrations_applied_forget()
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["migrations"]["ok"] is True
    assert "broker" not in body["checks"]  # embedded mode: no broker to check


def test_readyz_remembers_applied_migrations(client, django_assert_max_num_queries):
    readiness.migrations_applied_forget()
    client.get("/readyz")
    with django_assert_max_num_queries(
        4
    ):  # the database check only (PostgreSQL: savepoint, timeout, SELECT 1, release)
        assert client.get("/readyz").status_code == 200


def test_readyz_is_503_naming_an_unreachable_broker_and_relay(client, settings):
    dead = f"redis://127.0.0.1:{_free_port()}/0"
    settings.CELERY_BROKER_URL = dead
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.REDIS_URL = f"redis://127.0.0.1:{_free_port()}/0"
    settings.STEPLENS_OPS_CHECK_TIMEOUT_SECONDS = 0.5
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "service_unavailable"
    assert body["failed"] == ["broker", "redis"]
    assert "broker" in body["detail"] and "redis" in body["detail"]
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["detail"].startswith("ConnectionError")
    assert response["Retry-After"]


def test_readyz_is_503_when_migrations_are_missing(client, monkeypatch):
    from django.db.migrations.executor import MigrationExecutor

    readiness.migrations_applied_forget()
    real_plan = MigrationExecutor.migration_plan

    def plan_with_one_unapplied(self, targets, clean_start=False):
        # The last migration of ops counted as not applied, as after a deploy that forgot `migrate`.
        node = ("ops", "0001_initial")
        return real_plan(self, targets, clean_start) or [(self.loader.graph.nodes[node], False)]

    monkeypatch.setattr(MigrationExecutor, "migration_plan", plan_with_one_unapplied)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["migrations"]
    assert "ops.0001_initial" in response.json()["checks"]["migrations"]["detail"]
    readiness.migrations_applied_forget()


def test_readyz_with_a_redis_broker_checks_it(client, settings, redis_url):
    settings.CELERY_BROKER_URL = redis_url
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.REDIS_URL = redis_url
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"]["broker"]["ok"] is True
    assert response.json()["checks"]["redis"]["ok"] is True
