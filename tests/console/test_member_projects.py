"""Memberships limited to some projects (Membership.projects; empty: the whole organization): in the console such
a member or viewer sees only those projects' steps, runs, agents, step children, reports and monitors, and another
project's object is a 404 like another organization's. Owners and admins cannot be limited."""

import io
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import AuditEvent, Membership, Role
from accounts.services import api_key_create, membership_set, membership_set_projects
from config.errors import ApplicationError
from monitors.services import monitor_create, monitors_evaluate
from steps.models import Message, ProviderTrace, Step, StepMetrics
from steps.rollups import step_rollup_add, step_rollups_rebuild
from tests.factories import (
    AgentFactory,
    MessageFactory,
    OrganizationFactory,
    ProjectFactory,
    ProviderTraceFactory,
    RunFactory,
    StepFactory,
    StepMetricsFactory,
)

pytestmark = pytest.mark.django_db


def _project_data(organization, name: str, *, failed: bool) -> dict:
    project = ProjectFactory(organization=organization, name=name)
    agent = AgentFactory(organization=organization, project=project, name=f"{name}-agent")
    run = RunFactory(agent=agent, project=project, request_id=f"{name}-request")
    step = StepFactory(
        agent=agent, run=run, project=project, request_id=run.request_id, prompt_tokens=100, completion_tokens=20,
        total_tokens=120, cost_usd=Decimal("0.01"), status="failed" if failed else "success",
        error_type="rate_limit" if failed else None,
    )  # fmt: skip
    step_rollup_add(step=step)
    StepMetricsFactory(step=step)
    MessageFactory(step=step, run=run, agent=agent)
    ProviderTraceFactory(step=step)
    monitor, _ = monitor_create(
        organization=organization,
        data={"name": f"{name}-monitor", "project_id": project.pk, "metric": "steps", "operator": ">",
              "threshold": 1, "window_seconds": 600},
    )  # fmt: skip
    return {"project": project, "agent": agent, "run": run, "step": step, "monitor": monitor}


@pytest.fixture
def org():
    organization = OrganizationFactory(name="alpha")
    web = _project_data(organization, "web", failed=False)
    ops = _project_data(organization, "ops", failed=True)
    users = {}
    for name, role in (("owner", Role.OWNER), ("limited", Role.MEMBER), ("member", Role.MEMBER)):
        users[name] = get_user_model().objects.create_user(username=name, password="a-long-test-password-1")
        membership_set(organization=organization, user=users[name], role=role)
    membership_set_projects(membership=Membership.objects.get(user=users["limited"]), projects=[web["project"]])
    return {"organization": organization, "web": web, "ops": ops, "users": users}


def _client(org, name: str) -> Client:
    client = Client()
    client.force_login(org["users"][name])
    return client


def test_a_limited_member_lists_only_its_projects_rows(org):
    client = _client(org, "limited")
    web, ops = org["web"], org["ops"]
    for model, shown, hidden in (
        ("steps_step", web["step"].pk, ops["step"].pk),
        ("agents_run", web["run"].pk, ops["run"].pk),
        ("agents_agent", web["agent"].name, ops["agent"].name),
    ):
        html = client.get(reverse(f"admin:{model}_changelist"), follow=True).content.decode()
        assert shown in html and hidden not in html, model
    for model, name in ((StepMetrics, "steps_stepmetrics"), (Message, "steps_message"),
                        (ProviderTrace, "steps_providertrace")):  # fmt: skip
        response = client.get(reverse(f"admin:{name}_changelist"), follow=True)
        shown = [obj.step_id for obj in response.context["cl"].result_list]
        assert shown == [web["step"].pk], name
        assert model.objects.filter(step=ops["step"]).exists()
    monitors_evaluate(organization=org["organization"])  # each monitor: no_data -> ok, an alert event each
    events = client.get(reverse("admin:monitors_alertevent_changelist"), follow=True).context["cl"].result_list
    assert [e.monitor_id for e in events] == [web["monitor"].pk]
    # The unlimited member of the same organization sees both projects.
    html = _client(org, "member").get(reverse("admin:steps_step_changelist"), follow=True).content.decode()
    assert web["step"].pk in html and ops["step"].pk in html


def test_another_projects_objects_are_404_for_a_limited_member(org):
    client = _client(org, "limited")
    web, ops = org["web"], org["ops"]
    for name, obj in (("steps_step", "step"), ("agents_run", "run"), ("agents_agent", "agent")):
        assert client.get(reverse(f"admin:{name}_change", args=[ops[obj].pk])).status_code == 404, name
        assert client.get(reverse(f"admin:{name}_change", args=[web[obj].pk])).status_code == 200, name
    assert client.get(reverse("admin:monitor_detail", args=[ops["monitor"].pk])).status_code == 404
    assert client.get(reverse("admin:monitor_detail", args=[web["monitor"].pk])).status_code == 200
    monitors = client.get(reverse("admin:monitors")).content.decode()
    assert "web-monitor" in monitors and "ops-monitor" not in monitors
    # Feedback on another project's step is refused as not found; on its own it works.
    refused = client.post(reverse("admin:steps_step_feedback", args=[ops["step"].pk]), {"feedback": "negative"})
    assert refused.status_code == 404
    client.post(reverse("admin:steps_step_feedback", args=[web["step"].pk]), {"feedback": "positive"})
    ops["step"].refresh_from_db()
    web["step"].refresh_from_db()
    assert ops["step"].feedback is None and web["step"].feedback == "positive"


def test_a_limited_members_dashboard_and_errors_count_its_projects_like_a_key_of_that_project(org):
    client = _client(org, "limited")
    dashboard = client.get(reverse("admin:dashboard"), {"period": "7d"})
    assert dashboard.status_code == 200
    overall = dashboard.context["overall"]
    api = APIClient()
    raw_key = api_key_create(organization=org["organization"], scope="read", project=org["web"]["project"])[1]
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    usage = api.get("/v1/usage", dashboard.context["period"].params()).json()["data"][0]
    assert overall["steps"] == usage["steps"] == 1 and overall["total_tokens"] == usage["total_tokens"] == 120
    assert [name for _, name in dashboard.context["agents"]] == ["web-agent"]  # the agent menu, too
    errors = client.get(reverse("admin:errors"), {"period": "7d"}).context["page"]
    assert errors.total_steps == 1 and errors.total_errors == 0  # the failed step is ops's
    whole = _client(org, "member").get(reverse("admin:dashboard"), {"period": "7d"}).context["overall"]
    assert whole["steps"] == 2
    whole_errors = _client(org, "member").get(reverse("admin:errors"), {"period": "7d"}).context["page"]
    assert whole_errors.total_steps == 2 and whole_errors.total_errors == 1


def test_project_limits_are_checked_and_audited_and_owners_and_admins_cannot_be_limited(org):
    limited = Membership.objects.get(user=org["users"]["limited"])
    event = AuditEvent.objects.filter(action="member.projects", target_id=str(limited.pk)).get()
    assert event.before == {"user": "limited", "projects": []} and event.after == {
        "user": "limited",
        "projects": ["web"],
    }
    foreign = ProjectFactory(organization=OrganizationFactory())
    with pytest.raises(ApplicationError) as exc:
        membership_set_projects(membership=limited, projects=[foreign])
    assert exc.value.status_code == 404
    owner = Membership.objects.get(user=org["users"]["owner"])
    with pytest.raises(ApplicationError) as exc:
        membership_set_projects(membership=owner, projects=[org["web"]["project"]])
    assert exc.value.status_code == 400 and "projects" in exc.value.extra
    # Raising a limited member to admin lifts the limit (audited): an admin manages the whole organization.
    membership_set(organization=org["organization"], user=org["users"]["limited"], role=Role.ADMIN)
    assert not limited.projects.exists()
    assert AuditEvent.objects.filter(action="member.projects", target_id=str(limited.pk)).count() == 2
    html = _client(org, "limited").get(reverse("admin:steps_step_changelist"), follow=True).content.decode()
    assert org["ops"]["step"].pk in html


def test_add_member_command_limits_to_projects(org):
    call_command(
        "add_member", "--organization", "alpha", "--username", "ana", "--role", "viewer",
        "--project", "web", "--project", "new-one", stdout=io.StringIO(),
    )  # fmt: skip
    membership = Membership.objects.get(user__username="ana")
    assert sorted(membership.projects.values_list("name", flat=True)) == ["new-one", "web"]
    call_command("add_member", "--organization", "alpha", "--username", "ana", "--role", "viewer", stdout=io.StringIO())
    assert membership.projects.count() == 2  # no --project: the limit stays as it was
    assert Step.objects.count() == 2


def test_an_owner_limits_a_member_in_the_console_and_only_the_organizations_projects_are_offered(org):
    owner = _client(org, "owner")
    membership = Membership.objects.get(user=org["users"]["member"])
    url = reverse("admin:accounts_membership_change", args=[membership.pk])
    page = owner.get(url)
    offered = {str(pk) for pk, _ in page.context["adminform"].form.fields["projects"].choices}
    assert offered == {org["web"]["project"].pk, org["ops"]["project"].pk}
    foreign = ProjectFactory(organization=OrganizationFactory())
    refused = owner.post(url, {"role": "member", "projects": [foreign.pk]})
    assert refused.status_code == 200 and "projects" in refused.context["adminform"].form.errors
    assert not membership.projects.exists()
    response = owner.post(url, {"role": "member", "projects": [org["ops"]["project"].pk]})
    assert response.status_code == 302
    assert list(membership.projects.values_list("name", flat=True)) == ["ops"]
    event = AuditEvent.objects.get(action="member.projects", target_id=str(membership.pk))
    assert event.actor == "owner" and event.after["projects"] == ["ops"]
    html = _client(org, "member").get(reverse("admin:steps_step_changelist"), follow=True).content.decode()
    assert org["ops"]["step"].pk in html and org["web"]["step"].pk not in html
    # Lifting the limit (no project chosen) shows the whole organization again.
    owner.post(url, {"role": "member"})
    assert not membership.projects.exists()


def test_a_limited_members_step_filters_offer_only_its_projects_names(org):
    """The steps list's sidebar (providers, models, error types, tags) is built from the person's projects only:
    a member limited to `web` is not shown the names `ops` uses, while an unlimited member sees both."""
    web, ops = org["web"], org["ops"]
    Step.objects.filter(pk=web["step"].pk).update(provider_name="web-provider", model_handle="web/model-a")
    Step.objects.filter(pk=ops["step"].pk).update(
        provider_name="ops-provider", model_handle="ops/model-b", error_type="ops_only_error"
    )
    web["agent"].tags = ["web-tag"]
    web["agent"].save()
    ops["agent"].tags = ["ops-tag"]
    ops["agent"].save()
    step_rollups_rebuild(organization=org["organization"])
    url = reverse("admin:steps_step_changelist") + f"?organization={org['organization'].pk}"
    limited = _client(org, "limited").get(url).content.decode()
    unlimited = _client(org, "member").get(url).content.decode()
    for name in ("web-provider", "web/model-a", "web-tag"):
        assert name in limited and name in unlimited
    for name in ("ops-provider", "ops/model-b", "ops_only_error", "ops-tag"):
        assert name not in limited, name
        assert name in unlimited, name
