"""Indexes for the dashboard's subscriber list at a million rows.

(brand, created_at, id) serves the keyset pagination; on PostgreSQL, trigram
GIN indexes serve substring search on email and name (``icontains`` compiles to
``UPPER(name::text) LIKE UPPER(...)``, so the index is on that expression).
"""

from __future__ import annotations

from django.db import migrations, models

TRIGRAM = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    "CREATE INDEX IF NOT EXISTS subscriber_email_trgm ON audiences_subscriber USING gin (email gin_trgm_ops)",
    "CREATE INDEX IF NOT EXISTS subscriber_name_trgm ON audiences_subscriber USING gin (upper(name::text) gin_trgm_ops)",
]
UNDO = ["DROP INDEX IF EXISTS subscriber_email_trgm", "DROP INDEX IF EXISTS subscriber_name_trgm"]


def forward(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        for statement in TRIGRAM:
            schema_editor.execute(statement)


def backward(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        for statement in UNDO:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("audiences", "0005_brand_time_zone")]
    operations = [
        migrations.AddIndex(
            model_name="subscriber",
            index=models.Index(fields=["brand", "created_at", "id"], name="subscriber_brand_created"),
        ),
        migrations.RunPython(forward, backward),
    ]
