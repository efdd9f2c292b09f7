"""Runs and the steps left in them: which runs no step is left in (the check retention and deletion share), and
removing such runs with the messages they still hold."""

from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet

from agents.models import Run
from steps.models import Message, Step


def runs_left_empty(runs: QuerySet[Run]) -> QuerySet[Run]:
    """The runs of `runs` that no step is left in (their steps were all deleted, or they never had one).

    Checked run by run: one probe of the steps (run, created_at, id) index per run and partition, stopping at the
    first step found. No bound on the steps' time is assumed: an ingested (OTLP) run may have steps created before
    the run itself. Meant for a bounded set of runs (a list of ids, or a queryset read with a LIMIT): its cost
    grows with the runs looked at, not with the steps stored."""
    return runs.filter(~Exists(Step.objects.filter(run_id=OuterRef("pk"))))


def runs_delete_empty(run_ids: list[str]) -> dict[str, int]:
    """Delete those of `run_ids` that no step is left in, with their messages, in the caller's transaction (call
    it inside one). Returns the rows removed per model label, like QuerySet.delete().

    The same rows as `runs_left_empty(Run.objects.filter(pk__in=run_ids)).delete()`, without Django's collector:
    a run left empty has no step to cascade to, and on PostgreSQL the collector's `DELETE FROM steps_message
    WHERE run_id IN (...)` is planned as a sequential scan of every message partition (the planner expects each
    run's messages in each of them; at 10M steps, seconds per batch). Here each run's messages are found with one
    probe of the (run, sequence_id) index per partition instead, and most runs have none left. A step recorded
    into one of these runs meanwhile is never orphaned: the foreign key, checked at commit, fails the transaction
    and nothing of it is deleted (a run this old is long finished: that does not happen in retention)."""
    if not run_ids:
        return {}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # runs_left_empty's check, over the ids alone (the runs' rows are not read, nor locked: a step recorded
            # into one of them meanwhile makes the foreign key fail at commit, and nothing of the batch goes).
            cursor.execute(
                f'SELECT r.id FROM unnest(%s::text[]) AS r(id) WHERE NOT EXISTS (SELECT 1 FROM "{Step._meta.db_table}" '
                f's WHERE s."run_id" = r.id)',
                [list(run_ids)],
            )
            empty = [pk for (pk,) in cursor.fetchall()]
            if not empty:
                return {}
            # OFFSET 0 keeps the subquery from being flattened into a join the planner would hash (scanning every
            # partition): per run, an index probe in each partition.
            cursor.execute(
                f'SELECT m.id FROM unnest(%s::text[]) AS r(id) CROSS JOIN LATERAL (SELECT "id" FROM '
                f'"{Message._meta.db_table}" WHERE "run_id" = r.id OFFSET 0) m',
                [empty],
            )
            found = [pk for (pk,) in cursor.fetchall()]
        messages = Message.objects.filter(pk__in=found) if found else Message.objects.none()
    else:
        empty = list(runs_left_empty(Run.objects.filter(pk__in=run_ids)).values_list("pk", flat=True))
        if not empty:
            return {}
        messages = Message.objects.filter(run_id__in=empty)
    _, removed = messages.delete()  # a message has nothing depending on it: one DELETE, no collector
    counts = {label: n for label, n in removed.items() if n}
    with connection.cursor() as cursor:  # no step left to cascade to: no collector (see above)
        cursor.execute(f'DELETE FROM "{Run._meta.db_table}" WHERE "id" IN ({", ".join(["%s"] * len(empty))})', empty)
        counts[Run._meta.label] = cursor.rowcount
    return counts
