"""GIN indexes for the tags and metadata filters; PostgreSQL only (SQLite has no GIN and filters by scan)."""

from django.db import migrations

INDEXES = {
    # jsonb_ops: serves both `tags ?| array[...]` (any) and `tags @> '[...]'` (all).
    "step_tags_gin": "CREATE INDEX IF NOT EXISTS step_tags_gin ON steps_step USING gin (tags)",
    # jsonb_path_ops: smaller, and `metadata @> '{...}'` is the only operator the filter uses.
    "step_metadata_gin": "CREATE INDEX IF NOT EXISTS step_metadata_gin ON steps_step USING gin (metadata jsonb_path_ops)",
}


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for sql in INDEXES.values():
        schema_editor.execute(sql)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("steps", "0002_query_indexes_and_rollups")]

    operations = [migrations.RunPython(create, drop)]
