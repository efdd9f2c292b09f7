"""Every error of the API is JSON of one shape; an unavailable database is a 503 with Retry-After everywhere."""

import socket
from collections.abc import Iterator
from datetime import timedelta, timezone

import pytest
from django.db import connection
from django.test import Client
from django.urls import path
from rest_framework.test import APIClient
from rest_framework.views import APIView

from config.errors import ERROR_CODES
from tests.factories import AgentFactory, StepFactory


class _Broken(APIView):
    """A view with a bug, to see what an unexpected exception on /v1/ answers."""

    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request):
        raise ZeroDivisionError("a bug")


urlpatterns = [path("v1/broken", _Broken.as_view()), *__import__("config.urls").urls.urlpatterns]
handler404 = "config.exceptions.handler404"
handler500 = "config.exceptions.handler500"


def _assert_error_shape(body: dict, *, code: str) -> None:
    assert set(body) <= {"error", "detail", "fields"}, body
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    assert code in ERROR_CODES.values()
    for name, messages in body.get("fields", {}).items():
        assert isinstance(name, str) and messages and all(isinstance(m, str) for m in messages), body


@pytest.mark.django_db
def test_a_404_names_a_code_and_a_sentence(api_client):
    response = api_client.get("/v1/steps/step-nope")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "Step not found."}


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/v1/no-such-thing", "/v1/steps/step-1/nope", "/v1/"])
def test_an_unknown_api_path_is_a_json_404(api_client, url):
    response = api_client.get(url)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    _assert_error_shape(response.json(), code="not_found")


@pytest.mark.django_db
def test_bad_parameters_are_a_400_with_fields_and_a_sentence_naming_them(api_client):
    response = api_client.get("/v1/steps", {"limit": "0", "status": "flying"})
    assert response.status_code == 400
    body = response.json()
    _assert_error_shape(body, code="bad_request")
    assert "status" in body["fields"] or "limit" in body["fields"]
    assert any(name in body["detail"] for name in body["fields"])


@pytest.mark.django_db
def test_a_serializer_error_is_flattened_to_dotted_fields(api_client, organization):
    step = StepFactory(agent=AgentFactory(organization=organization), tags=["a"])
    response = api_client.patch(f"/v1/steps/{step.pk}/feedback", {"add_tags": ["ok", 5, {}]}, format="json")
    assert response.status_code == 400
    body = response.json()
    _assert_error_shape(body, code="bad_request")
    assert list(body["fields"]) == ["add_tags.1", "add_tags.2"]  # a number is not a tag


@pytest.mark.django_db
def test_missing_key_method_and_media_type_errors_share_the_shape(api_client):
    assert Client().get("/v1/steps").json()["error"] == "unauthorized"
    response = api_client.put("/v1/steps")  # DELETE /v1/steps starts a deletion job now
    assert response.status_code == 405
    _assert_error_shape(response.json(), code="method_not_allowed")
    response = api_client.generic("PATCH", "/v1/steps/step-x/feedback", "x=1", content_type="text/plain")
    assert response.status_code == 415
    _assert_error_shape(response.json(), code="unsupported_media_type")
    response = api_client.get("/v1/steps", HTTP_ACCEPT="text/html")
    assert response.status_code == 406
    _assert_error_shape(response.json(), code="not_acceptable")


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_an_unexpected_exception_on_the_api_is_a_json_500_not_a_page():
    response = Client(raise_request_exception=False).get("/v1/broken")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "server_error", "detail": "An unexpected error occurred; it has been logged."}


@pytest.mark.django_db
def test_deeply_nested_json_is_a_400_not_a_recursion_error(api_client, organization):
    agent = AgentFactory(organization=organization)
    depth = 100_000
    body = "[" * depth + "]" * depth
    response = api_client.generic("POST", f"/v1/agents/{agent.pk}/messages", body, content_type="application/json")
    assert response.status_code == 400
    _assert_error_shape(response.json(), code="bad_request")
    assert "nested" in response.json()["detail"]


# --- an unavailable database ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Outage:
    """Makes the default connection really fail to connect, as when the server is down (PostgreSQL: a port
    nothing listens on; SQLite: a file in a folder that does not exist), and brings it back."""

    def __init__(self) -> None:
        self.live = connection.connection
        self.saved = dict(connection.settings_dict)

    def down(self) -> None:
        if connection.vendor == "postgresql":
            connection.settings_dict.update(HOST="127.0.0.1", PORT=_free_port())
        else:
            connection.settings_dict["NAME"] = "/nonexistent-steplens-dir/db.sqlite3"
        connection.connection = None  # the next query connects again, and fails

    def up(self) -> None:
        if connection.connection is not None and connection.connection is not self.live:
            connection.connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(self.saved)
        if connection.vendor == "sqlite":
            connection.connection = self.live  # an in-memory test database lives only in its connection
        else:
            self.live.close()  # what a server restart leaves: the old socket is gone; the next query reconnects
            connection.connection = None


@pytest.fixture
def outage(transactional_db, settings) -> Iterator[_Outage]:
    """Restored before the test database is flushed."""
    settings.STEPLENS_DB_RETRY_AFTER_SECONDS = 7
    connection.ensure_connection()
    outage = _Outage()
    yield outage
    outage.up()


def _assert_unavailable(response) -> None:
    assert response.status_code == 503, response.content
    assert response["Retry-After"] == "7"
    assert response["Content-Type"] == "application/json"
    _assert_error_shape(response.json(), code="service_unavailable")


def test_api_key_authentication_without_a_database_is_a_503_with_retry_after(outage):
    outage.down()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer sl-anything")
    for url in ["/v1/steps", "/v1/usage", "/v1/runs"]:
        _assert_unavailable(client.get(url))
    _assert_unavailable(client.post("/v1/traces", b"", content_type="application/x-protobuf"))


def test_admin_pages_without_a_database_are_a_json_503(outage):
    outage.down()
    client = Client(raise_request_exception=False)
    client.cookies["sessionid"] = "a" * 32  # a session to look up: the admin reads the database
    _assert_unavailable(client.get("/admin/"))


def test_requests_succeed_again_once_the_database_is_back(outage, api_client):
    assert api_client.get("/v1/steps").status_code == 200
    outage.down()
    _assert_unavailable(api_client.get("/v1/steps"))
    _assert_unavailable(api_client.get("/v1/steps"))
    outage.up()
    assert api_client.get("/v1/steps").status_code == 200


# --- start and end: any offset, any year, never a 500 ------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/v1/steps", "/v1/usage", "/v1/errors"])
def test_offsets_beyond_postgresql_range_are_normalized_to_utc(api_client, organization, url):
    step = StepFactory(agent=AgentFactory(organization=organization))
    created = step.created_at
    # +20:00 is outside PostgreSQL's +-15:59: the same instants written with that offset must still match.
    start = created.astimezone(timezone(timedelta(hours=20))).replace(minute=0, second=0, microsecond=0)
    response = api_client.get(url, {"start": start.isoformat(), "end": "9999-01-01T00:00:00-23:59"})
    assert response.status_code == 200, response.content
    if url == "/v1/steps":
        assert [row["id"] for row in response.json()["data"]] == [step.pk]


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/v1/steps", "/v1/usage", "/v1/errors"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("start", "0001-01-01T00:00:00+05:00"),
        ("start", "0001-01-01T00:00:00-23:59"),
        ("end", "9999-12-31T23:59:59-05:00"),
        ("end", "9999-12-31T23:00:00+01:00"),
        ("start", "0001-01-01"),
        ("end", "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_dates_at_the_ends_of_the_calendar_are_a_400_naming_the_field(api_client, url, field, value):
    response = api_client.get(url, {field: value})
    assert response.status_code == 400, response.content
    body = response.json()
    _assert_error_shape(body, code="bad_request")
    assert list(body["fields"]) == [field]


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/v1/usage?group_by=week", "/v1/errors?group_by=day", "/v1/steps"])
def test_the_widest_window_allowed_is_answered(api_client, url):
    response = api_client.get(url, {"start": "0001-01-08T00:00:00Z", "end": "9999-12-24T00:00:00+00:00"})
    assert response.status_code == 200, response.content


@pytest.mark.django_db
def test_a_lone_surrogate_in_a_json_body_is_a_400_naming_where(api_client):
    body = '{"name": "a", "model_handle": "scripted/echo", "metadata": {"k": ["ok", "\\udc00"]}}'
    response = api_client.generic("POST", "/v1/agents", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert list(response.json()["fields"]) == ["metadata.k.1"]
    assert api_client.get("/v1/agents").json() == []


@pytest.mark.django_db
def test_a_json_body_over_the_limit_is_a_413_before_it_is_read(api_client, settings):
    settings.STEPLENS_API_MAX_BODY_BYTES = 1000
    body = '{"name": "a", "model_handle": "scripted/echo", "system": "' + "x" * 2000 + '"}'
    response = api_client.generic("POST", "/v1/agents", body, content_type="application/json")
    assert response.status_code == 413
    _assert_error_shape(response.json(), code="payload_too_large")
    assert api_client.get("/v1/agents").json() == []


@pytest.mark.django_db
def test_a_request_django_refuses_is_a_json_400_on_the_api():
    response = Client(raise_request_exception=False).get("/v1/steps", HTTP_HOST="evil.example")
    assert response.status_code == 400
    _assert_error_shape(response.json(), code="bad_request")


def test_what_counts_as_an_unavailable_database():
    psycopg = pytest.importorskip("psycopg")
    from django.db import DataError, IntegrityError, InterfaceError, OperationalError

    from config.exceptions import database_unavailable

    # A server restart terminates sessions with AdminShutdown (an OperationalError); a closed connection is an
    # InterfaceError; Django wraps both, and either may arrive unwrapped.
    for exc in (OperationalError(), InterfaceError(), psycopg.errors.AdminShutdown(), psycopg.InterfaceError()):
        assert database_unavailable(exc), exc
    for exc in (DataError(), IntegrityError(), psycopg.errors.UniqueViolation(), ValueError(), None):
        assert not database_unavailable(exc), exc
