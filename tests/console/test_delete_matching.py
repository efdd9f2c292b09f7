"""The console's "delete the steps matching this filter": the count, a confirmation, then the API's deletion job."""

import pytest
from django.contrib.auth import get_user_model

from accounts.models import Membership, Role
from steps.models import DeletionJob, Step
from tests.factories import AgentFactory, OrganizationFactory, StepFactory

pytestmark = pytest.mark.django_db

URL = "/admin/steps/step/delete-matching/"


@pytest.fixture
def steps(organization):
    agent = AgentFactory(organization=organization)
    mine = [StepFactory(agent=agent, user_id="u-1") for _ in range(3)]
    kept = [StepFactory(agent=agent, user_id="u-2") for _ in range(2)]
    other = OrganizationFactory()
    foreign = StepFactory(agent=AgentFactory(organization=other), user_id="u-1")
    return {"mine": mine, "kept": kept, "foreign": foreign}


def test_shows_the_count_and_deletes_only_after_confirmation(
    admin_client, organization, steps, django_capture_on_commit_callbacks
):
    query = f"?organization={organization.pk}&user_id=u-1"
    page = admin_client.get(URL + query)
    assert page.status_code == 200
    assert b"<strong>3</strong> steps match" in page.content
    assert Step.objects.filter(user_id="u-1").count() == 4  # nothing deleted by looking

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(URL + query)
    assert response.status_code == 302
    assert not Step.objects.filter(organization=organization, user_id="u-1").exists()
    assert Step.objects.filter(organization=organization, user_id="u-2").count() == 2
    assert Step.objects.filter(pk=steps["foreign"].pk).exists()
    assert DeletionJob.objects.get().status == "succeeded"
    listing = admin_client.get(f"/admin/steps/step/?organization={organization.pk}&user_id=u-2")
    assert b"delete-matching/?organization=" in listing.content


def test_refuses_no_filter_a_search_and_no_organization(admin_client, organization, steps):
    for query in (f"?organization={organization.pk}", f"?organization={organization.pk}&user_id=u-1&q=req"):
        response = admin_client.post(URL + query)
        assert response.status_code == 302
    assert admin_client.get(URL + "?user_id=u-1").status_code == 404
    assert Step.objects.count() == 6
    assert not DeletionJob.objects.exists()


def test_a_member_may_not_delete(client, organization, steps):
    user = get_user_model().objects.create_user(username="m", password="pw-12345-long", is_staff=True)
    Membership.objects.create(user=user, organization=organization, role=Role.MEMBER)
    client.force_login(user)
    assert client.post(URL + f"?organization={organization.pk}&user_id=u-1").status_code == 403
    assert Step.objects.count() == 6
