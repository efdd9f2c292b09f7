"""seed_steps: realistic rows for an organization (COPY on PostgreSQL, bulk_create on SQLite), rollups included."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Count, Sum

from accounts.models import Organization
from agents.models import Run
from steps.models import Message, ProviderTrace, Step, StepMetrics, StepRollupDay, StepRollupHour, StepStatus

pytestmark = pytest.mark.django_db


def test_seed_steps_creates_the_organization_and_realistic_steps():
    out = StringIO()
    call_command("seed_steps", "--count", "1500", "--organization", "acme", "--detail-share", "0.2", stdout=out)

    organization = Organization.objects.get(name="acme")
    steps = Step.objects.filter(organization=organization)
    count = steps.count()
    assert 1500 <= count < 1520  # whole runs: the last one may run past the count
    statuses = dict(steps.values_list("status").annotate(n=Count("pk")))
    assert statuses[StepStatus.SUCCESS] > 0.9 * count
    assert statuses.get(StepStatus.FAILED, 0) > 0
    assert steps.filter(error_type__isnull=False).values("error_type").distinct().count() >= 3
    assert steps.values("model").distinct().count() >= 4
    assert steps.values("agent").distinct().count() >= 10
    assert not steps.filter(run__isnull=True).exists()
    assert Run.objects.filter(organization=organization).count() == steps.values("run").distinct().count()
    assert not steps.exclude(request_id__in=Run.objects.values("request_id")).exists()
    assert (
        StepMetrics.objects.filter(step__organization=organization).count()
        == steps.exclude(status=StepStatus.PENDING).count()
    )
    assert Message.objects.filter(organization=organization).exists()
    assert ProviderTrace.objects.filter(organization=organization).exists()
    assert "done" in out.getvalue()

    ended = steps.exclude(status=StepStatus.PENDING)
    for table in (StepRollupHour, StepRollupDay):
        rolled = table.objects.filter(organization=organization).aggregate(
            steps=Sum("steps"), tokens=Sum("total_tokens"), errors=Sum("error_steps")
        )
        assert rolled["steps"] == ended.count()
        assert rolled["tokens"] == ended.aggregate(t=Sum("total_tokens"))["t"]
        assert rolled["errors"] == ended.filter(status=StepStatus.FAILED).count()


def test_seeding_twice_adds_to_the_same_organization():
    call_command("seed_steps", "--count", "200", "--organization", "twice", stdout=StringIO())
    call_command("seed_steps", "--count", "200", "--organization", "twice", stdout=StringIO())
    organization = Organization.objects.get(name="twice")
    assert Step.objects.filter(organization=organization).count() >= 400
    assert StepRollupHour.objects.filter(organization=organization).aggregate(s=Sum("steps"))["s"] == (
        Step.objects.filter(organization=organization).exclude(status=StepStatus.PENDING).count()
    )
