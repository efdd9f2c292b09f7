"""Children of a step carry its created_at (`step_created_at`): the key they are partitioned by on PostgreSQL
(steps 0012). Their FKs to steps become application-kept (db_constraint=False), and every unique key gains the
partition key. Existing rows are filled from their step (a message without one: its own created_at)."""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import Q

FILL = [
    "UPDATE steps_stepmetrics SET step_created_at = COALESCE("
    "(SELECT s.created_at FROM steps_step s WHERE s.id = steps_stepmetrics.step_id), CURRENT_TIMESTAMP)",
    "UPDATE steps_message SET step_created_at = COALESCE("
    "(SELECT s.created_at FROM steps_step s WHERE s.id = steps_message.step_id), created_at)",
    "UPDATE traces_providertrace SET step_created_at = COALESCE("
    "(SELECT s.created_at FROM steps_step s WHERE s.id = traces_providertrace.step_id), created_at)",
]


class Migration(migrations.Migration):
    dependencies = [
        ("steps", "0010_deletion_job"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="message", name="message_unique_run_seq"),
        migrations.RemoveConstraint(model_name="providertrace", name="ptrace_unique_step_attempt"),
        migrations.RemoveConstraint(model_name="step", name="step_unique_span"),
        migrations.RemoveConstraint(model_name="step", name="step_unique_run_attempt"),
        migrations.AlterField(
            model_name="stepmetrics",
            name="step",
            field=models.OneToOneField(
                db_constraint=False,
                on_delete=django.db.models.deletion.CASCADE,
                primary_key=True,
                related_name="metrics",
                serialize=False,
                to="steps.step",
            ),
        ),
        migrations.AlterField(
            model_name="message",
            name="step",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="messages",
                to="steps.step",
            ),
        ),
        migrations.AlterField(
            model_name="providertrace",
            name="step",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="provider_traces",
                to="steps.step",
            ),
        ),
        migrations.AddField(model_name="stepmetrics", name="step_created_at", field=models.DateTimeField(null=True)),
        migrations.AddField(model_name="message", name="step_created_at", field=models.DateTimeField(null=True)),
        migrations.AddField(model_name="providertrace", name="step_created_at", field=models.DateTimeField(null=True)),
        migrations.RunSQL(FILL, reverse_sql=migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="stepmetrics",
            name="step_created_at",
            field=models.DateTimeField(help_text="The step's created_at: the partition key on PostgreSQL."),
        ),
        migrations.AlterField(
            model_name="message",
            name="step_created_at",
            field=models.DateTimeField(
                help_text="The step's created_at (the message's own without a step): the partition key on PostgreSQL."
            ),
        ),
        migrations.AlterField(
            model_name="providertrace",
            name="step_created_at",
            field=models.DateTimeField(help_text="The step's created_at: the partition key on PostgreSQL."),
        ),
        migrations.AddConstraint(
            model_name="message",
            constraint=models.UniqueConstraint(
                condition=Q(run__isnull=False),
                fields=("run", "sequence_id", "step_created_at"),
                name="message_unique_run_seq",
            ),
        ),
        migrations.AddConstraint(
            model_name="providertrace",
            constraint=models.UniqueConstraint(
                fields=("step", "attempt", "step_created_at"), name="ptrace_unique_step_attempt"
            ),
        ),
        migrations.AddConstraint(
            model_name="step",
            constraint=models.UniqueConstraint(
                condition=Q(span_id__isnull=False, trace_id__isnull=False),
                fields=("organization", "trace_id", "span_id", "created_at"),
                name="step_unique_span",
            ),
        ),
        migrations.AddConstraint(
            model_name="step",
            constraint=models.UniqueConstraint(
                condition=Q(run__isnull=False, step_number__isnull=False),
                fields=("run", "step_number", "attempt", "created_at"),
                name="step_unique_run_attempt",
            ),
        ),
        migrations.AddConstraint(
            model_name="stepmetrics",
            constraint=models.UniqueConstraint(fields=("step", "step_created_at"), name="metrics_unique_step"),
        ),
    ]
