"""The demo is made of real runs: every kind of outcome the README promises is there."""

import io

import pytest
from django.core.management import call_command

from agents.models import Run, RunStatus, StopReason
from steps.models import ProviderTrace, Step, StepStatus

pytestmark = pytest.mark.django_db(transaction=True)


def test_seed_demo_records_real_runs_with_every_kind_of_outcome():
    call_command("seed_demo", "--runs", "80", "--seed", "11", stdout=io.StringIO())

    runs = Run.objects.filter(organization__name="demo")
    steps = Step.objects.filter(organization__name="demo")
    assert runs.count() == 80
    assert not steps.filter(status=StepStatus.PENDING).exists()
    assert set(steps.values_list("provider_name", flat=True)) == {"openai", "anthropic", "google"}
    assert all("demo" in tags for tags in steps.values_list("tags", flat=True))
    assert steps.filter(cached_input_tokens__gt=0).exists()
    assert steps.filter(reasoning_tokens__gt=0).exists()
    assert steps.filter(cost_usd__gt=0).count() > steps.count() / 2
    assert steps.filter(status=StepStatus.FAILED).exclude(error_type="").exists()
    assert runs.filter(status=RunStatus.CANCELLED).count() == 2
    assert runs.filter(stop_reason=StopReason.END_TURN).count() > 40
    assert ProviderTrace.objects.filter(step__organization__name="demo").count() == steps.count()
    spread = {step.created_at.date() for step in steps}
    assert len(spread) >= 4  # spread over the last week, not all "now"
    # Running it again does not duplicate the demo.
    call_command("seed_demo", stdout=io.StringIO())
    assert Run.objects.filter(organization__name="demo").count() == 80
