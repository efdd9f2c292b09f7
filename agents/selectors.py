"""Reads for agents and runs, always scoped to one organization."""

from collections.abc import Sequence

from django.db.models import Q, QuerySet

from accounts.models import Organization
from accounts.selectors import project_scope
from agents.models import Agent, Run, RunStatus
from config.errors import NotFound


def agent_list(*, organization: Organization) -> QuerySet[Agent]:
    agents = Agent.objects.filter(organization=organization, deleted_at__isnull=True, **project_scope(organization))
    return agents.order_by("-created_at", "-id")


def agent_get(*, organization: Organization, agent_id: str) -> Agent:
    agent = agent_list(organization=organization).filter(pk=agent_id).first()
    if agent is None:
        raise NotFound("Agent not found.")
    return agent


def agent_find(*, organization: Organization, name_or_id: str) -> Agent:
    """An agent by id or by name (the chat-completions `model` field may hold either)."""
    agent = agent_list(organization=organization).filter(Q(pk=name_or_id) | Q(name=name_or_id)).first()
    if agent is None:
        raise NotFound(f"No agent named {name_or_id!r}.", extra={"model": "must name an agent (its name or id)"})
    return agent


def agent_choices(*, organization: Organization, limit: int = 500) -> list[tuple[str, str]]:
    """(id, name) of `organization`'s agents by name, deleted ones included: their steps are still there. Narrowed
    to the projects the organization is scoped to (a project-limited key or console membership)."""
    agents = Agent.objects.filter(organization=organization, **project_scope(organization))
    return list(agents.order_by("name").values_list("pk", "name")[:limit])


def agent_tags(*, organization_id: str | None = None, project_ids: Sequence[str] | None = None) -> list[str]:
    """Tags agents put on their steps (scanning step tags would read every row); of `project_ids`' agents only,
    when given."""
    agents = Agent.objects.filter(deleted_at__isnull=True)
    if organization_id:
        agents = agents.filter(organization_id=organization_id)
    if project_ids:
        agents = agents.filter(project_id__in=list(project_ids))
    tags: set[str] = set()
    for values in agents.values_list("tags", flat=True)[:2000]:
        tags.update(str(tag) for tag in values or [])
    return sorted(tags)[:100]


def run_list(*, organization: Organization, agent_id: str | None = None, status: str | None = None) -> QuerySet[Run]:
    runs = Run.objects.filter(organization=organization, **project_scope(organization))
    runs = runs.select_related("agent").order_by("-created_at", "-id")
    if agent_id:
        runs = runs.filter(agent_id=agent_id)
    if status:
        runs = runs.filter(status=status)
    return runs


def run_get(*, organization: Organization, run_id: str) -> Run:
    run = Run.objects.filter(organization=organization, pk=run_id, **project_scope(organization))
    run = run.select_related("agent").first()
    if run is None:
        raise NotFound("Run not found.")
    return run


def run_organization(*, run_id: str) -> Organization | None:
    """The organization a run belongs to (the console spans organizations; the selectors take one)."""
    return Organization.objects.filter(runs__pk=run_id).first()


def run_stream_ended(*, run_id: str) -> bool:
    """Has the run finished? Its stream has nothing more to wait for.

    A paused run has not: an approval resumes it on the same stream (after the `done` that closed its pause).
    """
    ended = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
    return Run.objects.filter(pk=run_id, status__in=ended).exists()


def run_cancel_requested(*, run_id: str) -> bool:
    """Has someone asked the run to stop (its cancel flag, set from any process)?"""
    return Run.objects.filter(pk=run_id, cancel_requested_at__isnull=False).exists()
