"""The steps changelist's error-type choices (steps.selectors.step_error_types): every distinct type of the
organization, of the person's projects when limited, or of every organization; read by a loose index scan on
PostgreSQL and a DISTINCT on SQLite, with the same answer."""

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

from steps.selectors import step_error_types
from tests.factories import AgentFactory, OrganizationFactory, ProjectFactory, StepFactory

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def errors():
    organization = OrganizationFactory()
    web, ops = ProjectFactory(organization=organization), ProjectFactory(organization=organization)
    agent = AgentFactory(organization=organization)
    # Weeks apart (other partitions on PostgreSQL), repeated types, a cancelled step's type, and no project.
    for weeks, project, status, error_type in [
        (0, web, "failed", "rate_limit"),
        (1, web, "failed", "rate_limit"),
        (3, web, "failed", "timeout"),
        (0, ops, "failed", "ops_only"),
        (5, ops, "cancelled", "cancelled"),
        (2, None, "failed", "a_first"),
        (2, web, "success", None),
    ]:
        StepFactory(agent=agent, project=project, status=status, error_type=error_type,
                    created_at=T0 + timedelta(weeks=weeks))  # fmt: skip
    other = AgentFactory()  # another organization
    StepFactory(agent=other, status="failed", error_type="theirs", created_at=T0)
    StepFactory(agent=other, status="failed", error_type="b_theirs", created_at=T0 + timedelta(weeks=4))
    return organization, web, ops


def test_error_types_of_an_organization_are_its_distinct_types_in_order(errors):
    organization, _, _ = errors
    assert step_error_types(organization_id=organization.pk) == [
        "a_first", "cancelled", "ops_only", "rate_limit", "timeout",
    ]  # fmt: skip


def test_error_types_of_some_projects_leave_the_other_projects_out(errors):
    organization, web, ops = errors
    assert step_error_types(organization_id=organization.pk, project_ids=[web.pk]) == ["rate_limit", "timeout"]
    assert step_error_types(organization_id=organization.pk, project_ids=[web.pk, ops.pk]) == [
        "cancelled", "ops_only", "rate_limit", "timeout",
    ]  # fmt: skip
    assert step_error_types(organization_id=OrganizationFactory().pk) == []


def test_error_types_of_every_organization(errors):
    assert step_error_types() == ["a_first", "b_theirs", "cancelled", "ops_only", "rate_limit", "theirs", "timeout"]


def test_the_steps_list_offers_the_organizations_error_types(admin_client, errors):
    organization, _, _ = errors
    html = admin_client.get(reverse("admin:steps_step_changelist"), {"organization": organization.pk}).content.decode()
    for error_type in ("a_first", "cancelled", "ops_only", "rate_limit", "timeout"):
        assert f"error_type={error_type}" in html, error_type
    assert "error_type=theirs" not in html
