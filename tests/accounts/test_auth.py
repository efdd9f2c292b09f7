"""API keys: hashed, shown once, scoped to their organization; 401 with a JSON error otherwise."""

import io

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import ApiKey, Organization
from accounts.services import api_key_revoke, hash_api_key
from tests.factories import StepFactory

pytestmark = pytest.mark.django_db


def test_create_api_key_command_creates_the_organization_and_prints_the_key_last():
    out = io.StringIO()
    call_command("create_api_key", "--organization", "acme", stdout=out, stderr=io.StringIO())

    raw_key = out.getvalue().strip().splitlines()[-1]
    organization = Organization.objects.get(name="acme")
    stored = ApiKey.objects.get(organization=organization)
    assert raw_key.startswith("sl-")
    assert stored.hashed_key == hash_api_key(raw_key)
    assert raw_key not in (stored.hashed_key, stored.prefix)

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    step = StepFactory(agent__organization=organization)
    assert client.get(f"/v1/steps/{step.pk}").status_code == 200


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer sl-wrong", "Basic abc"])
def test_missing_or_wrong_key_is_a_401_with_a_json_error(header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/v1/steps/step-x")
    assert response.status_code == 401
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"] == "unauthorized"
    assert response.json()["detail"]


def test_revoked_key_is_refused(api_client, organization):
    api_key_revoke(api_key=ApiKey.objects.get(organization=organization))
    assert api_client.get("/v1/steps/step-x").status_code == 401


def test_x_api_key_header_also_authenticates(api_key, organization):
    step = StepFactory(agent__organization=organization)
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key)
    assert client.get(f"/v1/steps/{step.pk}").status_code == 200


def test_another_organizations_step_is_a_404(api_client):
    other_step = StepFactory()
    response = api_client.get(f"/v1/steps/{other_step.pk}")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "Step not found."}


def test_own_step_is_returned_with_usage_and_the_request_id_is_echoed(api_client, organization):
    step = StepFactory(agent__organization=organization, prompt_tokens=10, completion_tokens=5, total_tokens=15)
    response = api_client.get(f"/v1/steps/{step.pk}", HTTP_X_REQUEST_ID="req-client-1")
    assert response.status_code == 200
    assert response.json()["total_tokens"] == 15
    assert response.json()["progression"] == "START"
    assert response["X-Request-ID"] == "req-client-1"
    assert api_client.get(f"/v1/steps/{step.pk}")["X-Request-ID"].startswith("req-")


def test_demo_setup_prints_credentials_and_a_working_key(tmp_path):
    out = io.StringIO()
    credentials = tmp_path / "creds"
    call_command("demo_setup", "--credentials-file", str(credentials), stdout=out)
    text = out.getvalue()
    assert "username: admin" in text
    api_key = dict(line.split("=", 1) for line in credentials.read_text().splitlines())["api_key"]
    assert api_key in text
    # A second run keeps the same credentials rather than minting new ones.
    out2 = io.StringIO()
    call_command("demo_setup", "--credentials-file", str(credentials), stdout=out2)
    assert api_key in out2.getvalue()
    assert ApiKey.objects.filter(organization__name="demo").count() == 1
