"""Two organizations with one object of every registered model each, and people of every role: the data of the
console's isolation and role tests (tests/console/test_teams.py) and the browser test's member view."""

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import models
from django.utils import timezone

from accounts.audit import Actor
from accounts.models import Organization, Role
from accounts.roles import MEMBER_APPS
from accounts.services import api_key_create, audit_record, invitation_create, membership_set
from steps.rollups import step_rollup_add
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
from traces.models import IngestBatch

PASSWORD = "a-long-test-password-1"


@dataclass
class OrgData:
    """One organization's objects, by model (the first of each), and its marker string shown on its pages."""

    organization: Organization
    objects: dict[type[models.Model], models.Model] = field(default_factory=dict)

    def __getitem__(self, model: type[models.Model]) -> Any:
        return self.objects[model]


def _user(username: str, **flags: Any) -> Any:
    user = get_user_model().objects.create_user(username=username, password=PASSWORD, **flags)
    return user


def build_org(name: str, *, owner: Any) -> OrgData:
    """An organization named `name` with a project, agent, run, step (metrics, message, provider trace),
    ingest batch, API key, invitation, membership of `owner` and an audit event; names carry `name`."""
    organization = OrganizationFactory(name=name)
    project = ProjectFactory(organization=organization, name=f"{name}-project")
    agent = AgentFactory(organization=organization, name=f"{name}-agent", project=project)
    run = RunFactory(agent=agent, request_id=f"{name}-request", project=project)
    step = StepFactory(
        agent=agent,
        run=run,
        project=project,
        request_id=f"{name}-request",
        prompt_tokens=100,
        completion_tokens=20,
        total_tokens=120,
        cost_usd=Decimal("0.0100"),
        status="success",
    )
    step_rollup_add(step=step)  # what the write path does: the dashboard and reports read the rollups
    metrics = StepMetricsFactory(step=step)
    message = MessageFactory(step=step, run=run, agent=agent)
    trace = ProviderTraceFactory(step=step)
    batch = IngestBatch.objects.create(organization=organization, content_type="application/json", body=b"{}")
    membership = membership_set(organization=organization, user=owner, role=Role.OWNER)
    api_key, _ = api_key_create(organization=organization, name=f"{name}-key")
    invitation, _ = invitation_create(organization=organization, role=Role.VIEWER, email=f"x@{name}.example")
    event = audit_record(actor=Actor(label="test"), action="test.event", organization=organization)
    data = OrgData(organization)
    for obj in (organization, project, agent, run, step, metrics, message, trace, batch, membership, api_key,
                invitation, event):  # fmt: skip
        data.objects[type(obj)] = obj
    return data


def generic_object(model: type[models.Model], data: OrgData) -> models.Model | None:
    """An object of a model this module does not know (a later app's), filled field by field, or None when that
    is not possible (the isolation test then names the model to add to `build_org`)."""
    if not any(f.name == "organization" for f in model._meta.fields):
        return None
    values: dict[str, Any] = {}
    for f in model._meta.concrete_fields:
        if f.primary_key and (f.has_default() or isinstance(f, models.AutoField)):
            continue
        if f.null or f.has_default() or getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            continue
        if f.is_relation:
            target = f.related_model
            if target not in data.objects:
                return None
            values[f.name] = data.objects[target]
        elif f.choices:
            values[f.name] = f.choices[0][0]
        elif isinstance(f, models.CharField | models.TextField):
            values[f.name] = f"{data.organization.name}-{f.name}"[: f.max_length or 100]
        elif isinstance(f, models.IntegerField | models.FloatField | models.DecimalField):
            values[f.name] = 1
        elif isinstance(f, models.BooleanField):
            values[f.name] = False
        elif isinstance(f, models.DateTimeField):
            values[f.name] = timezone.now()
        elif isinstance(f, models.DurationField):
            values[f.name] = timedelta(minutes=1)
        elif isinstance(f, models.JSONField):
            values[f.name] = {}
        else:
            return None
    try:
        return model.objects.create(**values)
    except Exception:
        return None


@dataclass
class Teams:
    a: OrgData
    b: OrgData
    users: dict[str, Any]


def build_teams() -> Teams:
    """Organizations A ("alpha") and B ("bravo"); people: owner, admin, member, viewer of A, the owner of B
    ("other": a member of another organization), a superuser, and a staff user of no organization."""
    users = {name: _user(name) for name in ("owner", "admin", "member", "viewer", "other")}
    users["superuser"] = get_user_model().objects.create_superuser(username="root", password=PASSWORD)
    a = build_org("alpha", owner=users["owner"])
    b = build_org("bravo", owner=users["other"])
    for role in (Role.ADMIN, Role.MEMBER, Role.VIEWER):
        membership_set(organization=a.organization, user=users[role], role=role)
    for model in admin.site._registry:
        if model._meta.app_label in MEMBER_APPS:
            for data in (a, b):
                if model not in data.objects:
                    made = generic_object(model, data)
                    if made is not None:
                        data.objects[model] = made
    return Teams(a=a, b=b, users=users)
