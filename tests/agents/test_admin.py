"""The agents' model admins: the agent form checks what the API checks."""

import pytest

from agents.admin import AgentForm
from tests.factories import OrganizationFactory


@pytest.mark.django_db
def test_the_agent_admin_form_checks_the_model_handle_and_tools_like_the_api():
    organization = OrganizationFactory()
    base = {"organization": organization.pk, "name": "x", "system": "", "max_steps": 3, "tags": "[]", "metadata": "{}"}
    form = AgentForm(data={**base, "model_handle": "nope/", "tools": '["format_disk"]'})
    assert not form.is_valid()
    assert "model_handle" in form.errors and "tools" in form.errors
    assert AgentForm(data={**base, "model_handle": "scripted/echo", "tools": '["get_weather"]'}).is_valid()
