"""Reads for steps: every query is scoped to one organization."""

from accounts.models import Organization
from config.errors import NotFound
from steps.models import Step


def step_get(*, organization: Organization, step_id: str) -> Step:
    """One step of `organization` with its metrics; another organization's step is not found."""
    step = Step.objects.select_related("metrics", "agent", "run").filter(organization=organization, pk=step_id).first()
    if step is None:
        raise NotFound("Step not found.", extra={"step_id": step_id})
    return step
