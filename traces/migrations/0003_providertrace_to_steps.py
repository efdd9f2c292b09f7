"""ProviderTrace now belongs to `steps` (steps/0007 adds it to that app's state with db_table
`traces_providertrace`). State only: the table and its rows are not touched. No other model has a foreign key
to it, so nothing else needs re-pointing."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("traces", "0002_ingest_batch"),
        ("steps", "0007_providertrace_from_traces"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ProviderTrace")],
            database_operations=[],
        ),
    ]
