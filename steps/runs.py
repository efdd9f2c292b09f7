"""Runs and the steps left in them: which runs no step is left in, the check retention and deletion share."""

from django.db.models import Exists, OuterRef, QuerySet

from agents.models import Run
from steps.models import Step


def runs_left_empty(runs: QuerySet[Run]) -> QuerySet[Run]:
    """The runs of `runs` that no step is left in (their steps were all deleted, or they never had one).

    Checked run by run: one probe of the steps (run, created_at, id) index per run and partition, stopping at the
    first step found. No bound on the steps' time is assumed: an ingested (OTLP) run may have steps created before
    the run itself. Meant for a bounded set of runs (a list of ids, or a queryset read with a LIMIT): its cost
    grows with the runs looked at, not with the steps stored."""
    return runs.filter(~Exists(Step.objects.filter(run_id=OuterRef("pk"))))
