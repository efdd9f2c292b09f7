"""Monitors and alerts through a key limited to a project: it sees, changes and evaluates only its project's
monitors and their alerts; another project's monitor (or one of the whole organization) is a 404; the monitors it
creates are its project's, and naming another project is a 404 that names the field."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.services import api_key_create
from monitors.models import AlertEvent, Monitor
from monitors.services import monitors_evaluate
from tests.factories import AgentFactory, OrganizationFactory, ProjectFactory, StepFactory

pytestmark = pytest.mark.django_db

BODY = {"name": "errors", "metric": "steps", "operator": ">", "threshold": 2, "window_seconds": 600}


def _client(organization, *, scope: str = "full", project=None) -> APIClient:
    client = APIClient()
    raw_key = api_key_create(organization=organization, scope=scope, project=project)[1]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


@pytest.fixture
def world():
    organization = OrganizationFactory()
    mine = ProjectFactory(organization=organization, name="mine")
    theirs = ProjectFactory(organization=organization, name="theirs")
    full = _client(organization)
    monitors = {}
    for name, project in (("mine", mine), ("theirs", theirs), ("org", None)):
        body = {**BODY, "name": name, "project_id": project.pk if project else None}
        response = full.post("/v1/monitors", body, format="json")
        assert response.status_code == 201, response.content
        monitors[name] = response.json()["id"]
    # Three steps in each project, one minute old: every monitor goes from no_data to alerting (steps > 2 for the
    # organization-wide one, and for each project's: 3 > 2).
    now = timezone.now()
    for project in (mine, theirs):
        agent = AgentFactory(organization=organization, project=project)
        StepFactory.create_batch(3, agent=agent, project=project, status="success",
                                 created_at=now - timedelta(minutes=1))  # fmt: skip
    monitors_evaluate(now=now, organization=organization)
    return {"organization": organization, "mine": mine, "theirs": theirs, "monitors": monitors, "full": full}


def test_a_project_limited_key_lists_and_reads_only_its_projects_monitors_and_alerts(world):
    ids = world["monitors"]
    assert AlertEvent.objects.filter(organization=world["organization"]).count() == 3
    for scope in ("read", "full"):
        client = _client(world["organization"], scope=scope, project=world["mine"])
        assert [m["id"] for m in client.get("/v1/monitors").json()["data"]] == [ids["mine"]]
        assert client.get(f"/v1/monitors/{ids['mine']}").json()["project_id"] == world["mine"].pk
        alerts = client.get("/v1/alerts").json()["data"]
        assert [(a["monitor_id"], a["state"]) for a in alerts] == [(ids["mine"], "alerting")]
        assert client.get("/v1/alerts", {"monitor_id": ids["theirs"]}).json()["data"] == []
        assert len(client.get(f"/v1/monitors/{ids['mine']}/alerts").json()["data"]) == 1
        assert client.get(f"/v1/monitors/{ids['mine']}/deliveries").status_code == 200
    # The whole organization's key sees all three.
    assert len(world["full"].get("/v1/monitors").json()["data"]) == 3
    assert len(world["full"].get("/v1/alerts").json()["data"]) == 3


def test_another_projects_or_the_organizations_monitor_is_a_404_everywhere_for_a_project_limited_key(world):
    client = _client(world["organization"], project=world["mine"])
    for other in ("theirs", "org"):
        monitor_id = world["monitors"][other]
        for method, path in [("get", ""), ("patch", ""), ("delete", ""), ("get", "/alerts"), ("get", "/deliveries"),
                             ("post", "/test"), ("post", "/rotate-secret")]:  # fmt: skip
            body = {"name": "taken over"} if method == "patch" else {}
            response = getattr(client, method)(f"/v1/monitors/{monitor_id}{path}", body, format="json")
            assert response.status_code == 404, (other, method, path, response.content)
            assert response.json()["error"] == "not_found"
        assert Monitor.objects.get(pk=monitor_id).name == other
    assert Monitor.objects.count() == 3


def test_a_project_limited_key_creates_monitors_in_its_project_only(world):
    client = _client(world["organization"], project=world["mine"])
    created = client.post("/v1/monitors", {**BODY, "name": "new"}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["project_id"] == world["mine"].pk
    assert Monitor.objects.get(pk=created.json()["id"]).project == world["mine"]
    same = client.post("/v1/monitors", {**BODY, "name": "named", "project_id": world["mine"].pk}, format="json")
    assert same.status_code == 201 and same.json()["project_id"] == world["mine"].pk

    before = Monitor.objects.count()
    other = client.post("/v1/monitors", {**BODY, "project_id": world["theirs"].pk}, format="json")
    assert other.status_code == 404 and "project_id" in other.json()["fields"]
    by_filter = client.post("/v1/monitors", {**BODY, "filters": {"project_id": world["theirs"].pk}}, format="json")
    assert by_filter.status_code == 404 and "filters.project_id" in by_filter.json()["fields"]
    assert Monitor.objects.count() == before

    monitor_id = created.json()["id"]
    moved = client.patch(f"/v1/monitors/{monitor_id}", {"project_id": world["theirs"].pk}, format="json")
    assert moved.status_code == 404 and "project_id" in moved.json()["fields"]
    widened = client.patch(f"/v1/monitors/{monitor_id}", {"project_id": None}, format="json")
    assert widened.status_code == 200 and widened.json()["project_id"] == world["mine"].pk
    assert Monitor.objects.get(pk=monitor_id).project == world["mine"]


def test_a_monitor_created_by_a_project_limited_key_counts_only_its_projects_steps(world):
    client = _client(world["organization"], project=world["mine"])
    monitor_id = client.post("/v1/monitors", {**BODY, "name": "count", "threshold": 100}, format="json").json()["id"]
    monitors_evaluate(now=timezone.now(), organization=world["organization"])
    data = client.get(f"/v1/monitors/{monitor_id}").json()
    assert (data["state"], data["value"], data["steps"]) == ("ok", 3, 3)
    # The organization-wide monitor counted both projects.
    assert world["full"].get(f"/v1/monitors/{world['monitors']['org']}").json()["value"] == 6
