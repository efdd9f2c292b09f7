"""Errors rollups count failed steps only: before this release they also counted cancelled steps, under the error
type 'cancelled', so on an existing database the rollup path of /v1/errors over-counted them. The rows of that
error type are rebuilt from the failed steps (an ingested span may fail with error.type 'cancelled'); every
other row was right and is left alone."""

from datetime import UTC

from django.db import migrations
from django.db.models import Count, Max, Min, Sum, Value
from django.db.models.functions import Collate, Coalesce, TruncDay, TruncHour

# The rollup dimensions as they are at this migration (steps.models.ROLLUP_DIMENSIONS may grow later).
DIMENSIONS = ("project_id", "agent_id", "provider_name", "model", "model_handle")


def rebuild_cancelled_error_rows(apps, schema_editor):
    Step = apps.get_model("steps", "Step")
    hour_model = apps.get_model("steps", "ErrorRollupHour")
    day_model = apps.get_model("steps", "ErrorRollupDay")
    greatest = (
        (lambda column: Max(Collate(column, "C")))
        if schema_editor.connection.vendor == "postgresql"
        else (lambda column: Max(column))
    )
    hour_model.objects.filter(error_type="cancelled").delete()
    day_model.objects.filter(error_type="cancelled").delete()

    def store(model, rows, *, bucket, prefix=""):
        model.objects.bulk_create(
            (
                model(
                    organization_id=row["organization_id"],
                    bucket=row[bucket],
                    error_type="cancelled",
                    **{d: row[prefix + d] for d in DIMENSIONS},
                    count=row["n"],
                    first_seen=row["first"],
                    last_seen=row["last"],
                    example_step_id=row["example"],
                )
                for row in rows
            ),
            batch_size=1000,
        )

    hours = (
        Step.objects.filter(status="failed", error_type="cancelled")
        .annotate(hour=TruncHour("created_at", tzinfo=UTC), **{f"dim_{d}": Coalesce(d, Value("")) for d in DIMENSIONS})
        .values("organization_id", "hour", *(f"dim_{d}" for d in DIMENSIONS))
        .annotate(n=Count("pk"), first=Min("created_at"), last=Max("created_at"), example=greatest("id"))
        .order_by()
    )
    store(hour_model, hours.iterator(), bucket="hour", prefix="dim_")
    days = (
        hour_model.objects.filter(error_type="cancelled")
        .annotate(day=TruncDay("bucket", tzinfo=UTC))
        .values("organization_id", "day", *DIMENSIONS)
        .annotate(n=Sum("count"), first=Min("first_seen"), last=Max("last_seen"), example=greatest("example_step_id"))
        .order_by()
    )
    store(day_model, days.iterator(), bucket="day")


class Migration(migrations.Migration):
    dependencies = [("steps", "0005_step_unique_run_attempt")]

    operations = [migrations.RunPython(rebuild_cancelled_error_rows, migrations.RunPython.noop)]
