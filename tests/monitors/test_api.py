"""The monitors and alerts API: CRUD, errors that name the field, organization isolation, alert filters, the test
notification and secret rotation."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_key_create
from monitors.models import AlertEvent, Monitor
from monitors.services import monitors_evaluate
from tests.factories import AgentFactory, OrganizationFactory, ProjectFactory, StepFactory

BODY = {"name": "errors", "metric": "error_rate", "operator": ">", "threshold": 0.2, "window_seconds": 600}


def _client(organization) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(organization=organization, name='k')[1]}")
    return client


@pytest.mark.django_db
def test_create_read_update_list_delete(api_client, organization):
    project = ProjectFactory(organization=organization)
    body = {**BODY, "filters": {"model": "gpt-4o-mini,gpt-4o", "has_feedback": False, "metadata.tier": "gold"},
            "project_id": project.pk, "min_steps": 10, "group_by": "user",
            "targets": [{"kind": "webhook", "url": "https://hooks.example.com/x"},
                        {"kind": "email", "email": "oncall@example.com"}]}  # fmt: skip
    created = api_client.post("/v1/monitors", body, format="json")
    assert created.status_code == 201, created.content
    data = created.json()
    assert (data["state"], data["group_by"], data["project_id"], data["min_steps"]) == (
        "no_data",
        "user",
        project.pk,
        10,
    )
    assert data["effective_recovery_threshold"] == pytest.approx(0.18)
    assert data["filters"] == {"model": "gpt-4o-mini,gpt-4o", "has_feedback": False, "metadata.tier": "gold"}
    again = api_client.patch(f"/v1/monitors/{data['id']}", {"filters": data["filters"]}, format="json")
    assert again.status_code == 200 and again.json()["filters"] == data["filters"]
    assert Monitor.objects.get().secret_encrypted and data["secret"] not in Monitor.objects.get().secret_encrypted
    changed = api_client.patch(f"/v1/monitors/{data['id']}", {"threshold": 0.5, "name": "renamed"}, format="json")
    assert changed.status_code == 200 and changed.json()["threshold"] == 0.5
    listed = api_client.get("/v1/monitors").json()["data"]
    assert [(m["id"], m["name"], m["alerting_groups"]) for m in listed] == [(data["id"], "renamed", [])]
    assert api_client.delete(f"/v1/monitors/{data['id']}").status_code == 204
    assert api_client.get(f"/v1/monitors/{data['id']}").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric": "happiness"}, "metric"),
        ({"operator": "=="}, "operator"),
        ({"threshold": "0.2"}, "threshold"),
        ({"window_seconds": 60}, "window_seconds"),
        ({"window_seconds": 8 * 86400}, "window_seconds"),
        ({"min_steps": -1}, "min_steps"),
        ({"group_by": "country"}, "group_by"),
        ({"filters": {"agnet_id": "a"}}, "filters.agnet_id"),
        ({"filters": {"status": "broken"}}, "filters.status"),
        ({"filters": {"start": "2026-01-01T00:00:00Z"}}, "filters.start"),
        ({"filters": {"has_feedback": "yes"}}, "filters.has_feedback"),
        ({"filters": {"min_latency_ms": -5}}, "filters.min_latency_ms"),
        ({"recovery_threshold": 0.3}, "recovery_threshold"),
        ({"targets": [{"kind": "webhook"}]}, "targets.0.url"),
        ({"targets": [{"kind": "webhook", "url": "ftp://x.example.com"}]}, "targets.0.url"),
        ({"targets": [{"kind": "webhook", "url": "http://127.0.0.1:8000/x"}]}, "targets.0.url"),
        ({"targets": [{"kind": "webhook", "url": "http://169.254.169.254/latest"}]}, "targets.0.url"),
        ({"targets": [{"kind": "webhook", "url": "http://localhost/x"}]}, "targets.0.url"),
        ({"targets": [{"kind": "email", "email": "not-an-address"}]}, "targets.0.email"),
        ({"targets": [{"kind": "pager", "url": "https://x.example.com"}]}, "targets.0.kind"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(api_client, change, field):
    response = api_client.post("/v1/monitors", {**BODY, **change}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "bad_request" and field in body["fields"], body
    assert not Monitor.objects.exists()


@pytest.mark.django_db
def test_private_notification_urls_are_allowed_when_the_deployment_says_so(api_client, settings):
    settings.STEPLENS_NOTIFY_ALLOW_PRIVATE = True
    body = {**BODY, "targets": [{"kind": "webhook", "url": "http://127.0.0.1:9/x"}]}
    assert api_client.post("/v1/monitors", body, format="json").status_code == 201


@pytest.mark.django_db
def test_an_unknown_or_foreign_project_is_a_404_naming_it(api_client):
    for project_id in ("project-nope", ProjectFactory().pk):
        response = api_client.post("/v1/monitors", {**BODY, "project_id": project_id}, format="json")
        assert response.status_code == 404 and "project_id" in response.json()["fields"]
    assert not Monitor.objects.exists()


@pytest.mark.django_db
def test_another_organizations_monitor_is_a_404_everywhere(api_client):
    other = OrganizationFactory()
    theirs = _client(other).post("/v1/monitors", BODY, format="json").json()["id"]
    for method, path in [("get", ""), ("patch", ""), ("delete", ""), ("get", "/alerts"), ("get", "/deliveries"),
                         ("post", "/test"), ("post", "/rotate-secret")]:  # fmt: skip
        response = getattr(api_client, method)(f"/v1/monitors/{theirs}{path}", {}, format="json")
        assert response.status_code == 404, (method, path, response.content)
        assert response.json()["error"] == "not_found"
    assert api_client.get("/v1/alerts", {"monitor_id": theirs}).json()["data"] == []
    assert api_client.get("/v1/monitors").json()["data"] == []
    assert Monitor.objects.filter(pk=theirs).exists()


@pytest.mark.django_db
def test_alerts_are_listed_by_state_and_time_for_one_monitor_or_all(api_client, organization):
    agent = AgentFactory(organization=organization)
    monitor_id = api_client.post("/v1/monitors", {**BODY, "min_steps": 1}, format="json").json()["id"]
    now = timezone.now()
    StepFactory(agent=agent, status="failed", error_type="x", created_at=now - timedelta(seconds=5))
    monitors_evaluate(now=now)
    StepFactory(agent=agent, status="success", created_at=now + timedelta(seconds=5))
    StepFactory.create_batch(9, agent=agent, status="success", created_at=now + timedelta(seconds=5))
    monitors_evaluate(now=now + timedelta(seconds=10))
    events = api_client.get("/v1/alerts").json()["data"]
    assert [(e["previous_state"], e["state"], e["resolved"]) for e in events] == [
        ("alerting", "ok", True), ("no_data", "alerting", False)
    ]  # fmt: skip
    assert [e["state"] for e in api_client.get("/v1/alerts", {"state": "alerting"}).json()["data"]] == ["alerting"]
    first = AlertEvent.objects.order_by("created_at").first()
    later = api_client.get("/v1/alerts", {"start": (first.created_at + timedelta(microseconds=1)).isoformat()})
    assert [e["state"] for e in later.json()["data"]] == ["ok"]
    assert len(api_client.get(f"/v1/monitors/{monitor_id}/alerts", {"limit": 1}).json()["data"]) == 1
    assert api_client.get("/v1/alerts", {"state": "firing"}).json()["fields"]["state"]
    assert api_client.get("/v1/alerts", {"bogus": "1"}).json()["fields"] == {"bogus": ["Unknown parameter."]}
    event = events[1]
    assert event["window"]["seconds"] == 600 and event["links"]["api_steps"].startswith("http")


@pytest.mark.django_db
def test_the_test_action_needs_a_target(api_client):
    monitor_id = api_client.post("/v1/monitors", BODY, format="json").json()["id"]
    response = api_client.post(f"/v1/monitors/{monitor_id}/test")
    assert response.status_code == 409 and "targets" in response.json()["fields"]
