"""ProviderTrace moves from the `traces` app into `steps` (which owns the step records). State only: the table
`traces_providertrace`, its rows, indexes and constraints stay exactly as they are (the model names the table
with db_table). traces/0003 removes the model from the traces state after this one adds it here.

The content type row moves with it (app_label traces -> steps), so admin permissions already given on provider
traces (view_providertrace, ...) keep pointing at the model."""

import django.db.models.deletion
from django.db import migrations, models


def _move_content_type(apps, schema_editor, *, source: str, target: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    # A content type under the new label exists only if something created it meanwhile (post_migrate of a
    # partial migrate); then the old one is left as Django leaves any stale content type.
    if not ContentType.objects.using(db).filter(app_label=target, model="providertrace").exists():
        ContentType.objects.using(db).filter(app_label=source, model="providertrace").update(app_label=target)


def content_type_to_steps(apps, schema_editor):
    _move_content_type(apps, schema_editor, source="traces", target="steps")


def content_type_to_traces(apps, schema_editor):
    _move_content_type(apps, schema_editor, source="steps", target="traces")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("steps", "0006_error_rollups_failed_only"),
        ("traces", "0002_ingest_batch"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="ProviderTrace",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("attempt", models.PositiveSmallIntegerField(default=1)),
                        ("provider", models.CharField(max_length=64)),
                        ("api", models.CharField(blank=True, default="", max_length=32)),
                        ("model", models.CharField(blank=True, default="", max_length=200)),
                        ("request_json", models.JSONField(blank=True, null=True)),
                        ("response_json", models.JSONField(blank=True, null=True)),
                        ("latency_ms", models.PositiveIntegerField(blank=True, null=True)),
                        ("error_type", models.CharField(blank=True, max_length=64, null=True)),
                        ("error_message", models.TextField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "organization",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="provider_traces",
                                to="accounts.organization",
                            ),
                        ),
                        (
                            "step",
                            models.ForeignKey(
                                db_index=False,
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="provider_traces",
                                to="steps.step",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "traces_providertrace",
                        "constraints": [
                            models.UniqueConstraint(fields=("step", "attempt"), name="ptrace_unique_step_attempt")
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_type_to_steps, content_type_to_traces),
    ]
