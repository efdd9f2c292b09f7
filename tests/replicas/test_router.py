"""The read-replica rules (config.db_router, ReplicaReadsMiddleware) on either database: which alias a read or a
write gets, which requests may read the replica, and the settings that turn it on. The last tests give the suite's
own database a second alias, a mirror, as the test runner does for DATABASE_REPLICA_URL, and call the API."""

import runpy
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import environ
import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from django.http import HttpResponse, StreamingHttpResponse
from django.test import RequestFactory

from accounts.models import ApiKey, Organization
from agents.models import Run
from config import db_router
from config.celery import app as celery_app
from config.db_router import PRIMARY, REPLICA, ROUTER, ReplicaRouter, primary, replica_reads, replica_settings
from config.middleware import PIN_COOKIE, ReplicaReadsMiddleware
from steps.models import Step, StepRollupDay
from tests.factories import AgentFactory, RunFactory, StepFactory

SETTINGS = Path(__file__).resolve().parents[2] / "config" / "settings"
PRIMARY_URL = "postgres://steplens:secret@db-primary:5432/steplens"
REPLICA_URL = "postgres://steplens_ro:secret@db-replica:5433/steplens?sslmode=require"


@pytest.fixture
def replica_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """The router's and the middleware's view of the settings: a replica alias is configured (nothing connects)."""
    monkeypatch.setattr(db_router, "replica_configured", lambda: True)
    monkeypatch.setattr("config.middleware.replica_configured", lambda: True)


# --- settings -----------------------------------------------------------------------------------------------------


def test_replica_settings_follow_the_primary_and_mirror_it_in_tests():
    primary_settings = {**environ.Env.db_url_config(PRIMARY_URL), "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True}
    replica = replica_settings(environ.Env.db_url_config(REPLICA_URL), primary=primary_settings)

    assert (replica["HOST"], replica["PORT"], replica["USER"], replica["NAME"]) == (
        "db-replica",
        5433,
        "steplens_ro",
        "steplens",
    )
    assert replica["OPTIONS"] == {"sslmode": "require"}
    assert (replica["CONN_MAX_AGE"], replica["CONN_HEALTH_CHECKS"], replica["ATOMIC_REQUESTS"]) == (60, True, False)
    assert replica["TEST"] == {"MIRROR": "default"}  # the suite never creates a database on the replica server


def test_a_replica_of_another_engine_is_refused():
    with pytest.raises(ImproperlyConfigured, match="DATABASE_REPLICA_URL"):
        replica_settings(environ.Env.db_url_config(REPLICA_URL), primary=environ.Env.db_url_config("sqlite:///x.db"))


def _settings(monkeypatch: pytest.MonkeyPatch, module: str) -> dict:
    """The settings module run afresh in this environment (production.py imports base.py again, not this run's)."""
    monkeypatch.delitem(sys.modules, "config.settings.base")
    return runpy.run_path(str(SETTINGS / module))


@pytest.mark.parametrize("module", ["base.py", "production.py"])
def test_database_replica_url_adds_the_replica_alias_and_the_router(monkeypatch, module):
    monkeypatch.setenv("DJANGO_SECRET_KEY", "k" * 50)
    monkeypatch.setenv("DATABASE_URL", PRIMARY_URL)
    monkeypatch.setenv("DATABASE_REPLICA_URL", REPLICA_URL)
    values = _settings(monkeypatch, module)

    assert set(values["DATABASES"]) == {"default", "replica"}
    assert values["DATABASES"]["replica"]["HOST"] == "db-replica"
    assert values["DATABASES"]["replica"]["TEST"] == {"MIRROR": "default"}
    assert values["DATABASE_ROUTERS"] == [ROUTER]
    assert "config.middleware.ReplicaReadsMiddleware" in values["MIDDLEWARE"]


@pytest.mark.parametrize("module", ["base.py", "production.py"])
def test_without_database_replica_url_there_is_one_database_and_no_router(monkeypatch, module):
    monkeypatch.setenv("DJANGO_SECRET_KEY", "k" * 50)
    monkeypatch.setenv("DATABASE_URL", PRIMARY_URL)
    monkeypatch.delenv("DATABASE_REPLICA_URL", raising=False)
    values = _settings(monkeypatch, module)

    assert set(values["DATABASES"]) == {"default"}
    assert "DATABASE_ROUTERS" not in values


# --- the router -----------------------------------------------------------------------------------------------------


def test_reads_go_to_the_primary_unless_the_code_around_them_opts_in(replica_exists):
    r = ReplicaRouter()
    assert r.db_for_read(Step) == PRIMARY  # a Celery task, the agent loop, ingest, SSE: nothing opted in
    with replica_reads():
        assert [r.db_for_read(m) for m in (Step, Run, StepRollupDay)] == [REPLICA] * 3
        with primary():
            assert r.db_for_read(Step) == PRIMARY
        assert r.db_for_read(Step) == REPLICA
    assert r.db_for_read(Step) == PRIMARY


def test_a_primary_block_is_not_undone_by_an_inner_replica_block(replica_exists):
    with primary(), replica_reads():
        assert ReplicaRouter().db_for_read(Step) == PRIMARY


def test_primary_works_as_a_decorator(replica_exists):
    @primary()
    def read_back() -> str:
        return ReplicaRouter().db_for_read(Run)

    with replica_reads():
        assert read_back() == PRIMARY
        assert ReplicaRouter().db_for_read(Run) == REPLICA


@celery_app.task(name="tests.replicas.alias_of_a_step_read")
def alias_of_a_step_read() -> str:
    return ReplicaRouter().db_for_read(Step)


def test_a_celery_task_reads_the_primary_even_when_run_eagerly_inside_a_replica_request(replica_exists):
    with replica_reads():
        assert alias_of_a_step_read.apply().get() == PRIMARY
        assert ReplicaRouter().db_for_read(Step) == REPLICA  # the request's own scope is back after the task


def test_tenancy_and_login_tables_are_always_read_from_the_primary(replica_exists):
    with replica_reads():
        assert [ReplicaRouter().db_for_read(m) for m in (ApiKey, Organization, User, Session)] == [PRIMARY] * 4


def test_writes_go_to_the_primary_and_later_reads_of_the_request_follow_them(replica_exists):
    r = ReplicaRouter()
    with replica_reads():
        assert r.db_for_write(ApiKey) == PRIMARY  # a key's last-used time: nothing replicated depends on it
        assert r.db_for_read(Step) == REPLICA
        assert r.db_for_write(Step) == PRIMARY
        assert r.db_for_read(Step) == PRIMARY  # read-your-writes for the rest of the block
        assert r.db_for_read(Run) == PRIMARY
    with replica_reads():
        assert r.db_for_read(Step) == REPLICA  # the next request starts afresh


def test_reads_inside_a_transaction_go_to_the_primary(replica_exists, monkeypatch):
    monkeypatch.setattr(connections[PRIMARY], "in_atomic_block", True)
    with replica_reads():
        assert ReplicaRouter().db_for_read(Step) == PRIMARY


@pytest.mark.django_db
def test_inside_a_tests_transaction_reads_stay_on_the_primary_connection(replica_exists):
    # The test's rows are uncommitted: only the primary's connection sees them (a mirror alias would not).
    with replica_reads():
        assert ReplicaRouter().db_for_read(Step) == PRIMARY


def test_without_a_replica_everything_reads_the_primary(monkeypatch):
    monkeypatch.setattr(connections, "settings", {PRIMARY: connections.settings[PRIMARY]})
    assert not db_router.replica_configured()
    with replica_reads():
        assert ReplicaRouter().db_for_read(Step) == PRIMARY


def test_migrations_run_on_the_primary_only_and_objects_of_both_aliases_relate():
    r = ReplicaRouter()
    assert r.allow_migrate(PRIMARY, "steps") is True
    assert r.allow_migrate(REPLICA, "steps") is False
    step, run = Step(), Run()
    step._state.db, run._state.db = REPLICA, PRIMARY
    assert r.allow_relation(step, run) is True
    run._state.db = "other"
    assert r.allow_relation(step, run) is None


# --- the middleware -------------------------------------------------------------------------------------------------


def _decision(method: str, path: str, *, cookies: dict | None = None) -> tuple[str, HttpResponse]:
    seen = {}

    def view(request):
        seen["alias"] = ReplicaRouter().db_for_read(Step)
        return HttpResponse("ok")

    request = getattr(RequestFactory(), method.lower())(path)
    request.COOKIES.update(cookies or {})
    response = ReplicaReadsMiddleware(view)(request)
    return seen["alias"], response


@pytest.mark.parametrize(
    "path",
    [
        "/v1/steps",
        "/v1/requests/req-1",
        "/v1/usage",
        "/v1/errors",
        "/admin/",
        "/admin/dashboard/",
        "/admin/errors/",
        "/admin/steps/step/",
        "/admin/steps/step/step-1/change/",
        "/admin/agents/run/",
    ],
)
def test_list_report_request_and_console_reads_may_use_the_replica(replica_exists, path):
    assert _decision("GET", path)[0] == REPLICA
    assert _decision("HEAD", path)[0] == REPLICA


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/steps/step-1"),  # one object, often read right after it was written
        ("GET", "/v1/steps/step-1/messages"),
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/run-1"),  # a run's state, polled while it runs
        ("GET", "/v1/runs/run-1/stream"),  # SSE
        ("GET", "/v1/runs/run-1/usage"),
        ("GET", "/v1/agents"),
        ("GET", "/admin/agents/run/run-1/change/"),  # a run's page: the run may be streaming
        ("POST", "/v1/traces"),
        ("POST", "/v1/agents/a/messages"),
        ("PATCH", "/v1/steps/step-1/feedback"),
        ("DELETE", "/v1/steps"),
        ("POST", "/admin/steps/step/"),
    ],
)
def test_writes_and_reads_that_must_see_writes_use_the_primary(replica_exists, method, path):
    assert _decision(method, path)[0] == PRIMARY


def test_a_console_form_pins_the_browser_to_the_primary_for_a_while(replica_exists, settings):
    settings.STEPLENS_REPLICA_PIN_SECONDS = 7
    _, response = _decision("POST", "/admin/steps/step/step-1/feedback/")
    cookie = response.cookies[PIN_COOKIE]
    assert (cookie["max-age"], cookie["path"], bool(cookie["httponly"])) == (7, "/admin/", True)
    assert _decision("GET", "/admin/steps/step/", cookies={PIN_COOKIE: "1"})[0] == PRIMARY
    assert _decision("GET", "/admin/steps/step/")[0] == REPLICA  # once the cookie expired

    assert PIN_COOKIE not in _decision("POST", "/v1/traces")[1].cookies  # API clients are not pinned
    settings.STEPLENS_REPLICA_PIN_SECONDS = 0
    assert PIN_COOKIE not in _decision("POST", "/admin/steps/step/step-1/feedback/")[1].cookies


def test_a_streamed_body_reads_the_primary(replica_exists):
    seen = []

    def view(request):
        def body():
            seen.append(ReplicaRouter().db_for_read(Step))
            yield b"data: x\n\n"

        return StreamingHttpResponse(body(), content_type="text/event-stream")

    response = ReplicaReadsMiddleware(view)(RequestFactory().get("/v1/steps"))
    b"".join(response.streaming_content)
    assert seen == [PRIMARY]


def test_without_a_replica_the_middleware_changes_nothing(monkeypatch):
    monkeypatch.setattr(db_router, "replica_configured", lambda: False)
    monkeypatch.setattr("config.middleware.replica_configured", lambda: False)
    assert _decision("GET", "/v1/steps")[0] == PRIMARY
    assert PIN_COOKIE not in _decision("POST", "/admin/steps/step/")[1].cookies


# --- a mirror alias on the suite's database, as the test runner makes for DATABASE_REPLICA_URL ----------------------


@pytest.fixture
def mirror(settings) -> Iterator[None]:
    """`replica` as a second connection to the test database, with the router installed.

    With DATABASE_REPLICA_URL the runner made that mirror already (and tests/conftest.py lets every database test use
    it). Otherwise it is added here, after the test case was set up: its guard against aliases it was not given
    stops only connections it has to open, so this one is opened here.
    """
    added = REPLICA not in connections.settings
    if added:
        connections.settings[REPLICA] = {**connections[PRIMARY].settings_dict, "TEST": {"MIRROR": PRIMARY}}
        connections[REPLICA].connect()
    settings.DATABASE_ROUTERS = [ROUTER]
    try:
        yield
    finally:
        if added:
            connections[REPLICA].close()
            del connections[REPLICA]
            del connections.settings[REPLICA]


def _queries_by_alias(client, path: str) -> tuple[Counter, dict]:
    seen: Counter = Counter()

    def wrapper(alias):
        def record(execute, sql, params, many, context):
            if "accounts_" not in sql:  # the API key lookup always reads the primary
                seen[alias] += 1
            return execute(sql, params, many, context)

        return record

    with (
        connections[PRIMARY].execute_wrapper(wrapper(PRIMARY)),
        connections[REPLICA].execute_wrapper(wrapper(REPLICA)),
    ):
        response = client.get(path)
    assert response.status_code == 200, response.content
    return seen, response.json()


@pytest.mark.django_db(transaction=True)
def test_the_step_list_and_the_request_join_read_the_mirror_alias(mirror, api_client, organization):
    agent = AgentFactory(organization=organization)
    run = RunFactory(organization=organization, agent=agent, request_id="req-mirror")
    StepFactory.create_batch(3, organization=organization, agent=agent, run=run, request_id="req-mirror")

    seen, body = _queries_by_alias(api_client, "/v1/steps")
    assert len(body["data"]) == 3
    assert seen[REPLICA] > 0 and seen[PRIMARY] == 0, seen

    seen, body = _queries_by_alias(api_client, "/v1/requests/req-mirror")
    assert len(body["steps"]) == 3
    assert seen[REPLICA] > 0 and seen[PRIMARY] == 0, seen

    seen, _ = _queries_by_alias(api_client, f"/v1/runs/{run.pk}")
    assert seen[REPLICA] == 0 and seen[PRIMARY] > 0, seen


@pytest.mark.django_db
def test_in_a_tests_transaction_the_api_reads_the_primary_even_with_a_replica(mirror, api_client, organization):
    StepFactory.create_batch(2, organization=organization)
    seen, body = _queries_by_alias(api_client, "/v1/steps")
    assert len(body["data"]) == 2  # the uncommitted rows were found: the primary connection read them
    assert seen[REPLICA] == 0, seen


@pytest.mark.django_db(transaction=True)
def test_read_connection_is_the_routed_alias(mirror):
    assert db_router.read_connection(Step).alias == PRIMARY
    with replica_reads():
        assert db_router.read_connection(Step).alias == REPLICA
        assert router.db_for_read(ApiKey) == PRIMARY
