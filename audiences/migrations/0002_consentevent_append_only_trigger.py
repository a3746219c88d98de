"""On PostgreSQL, refuse UPDATE on consent events in the database itself.

The model already refuses updates; the trigger also stops raw SQL and other
clients. Two things stay possible: deletes (erasure and the purge of unconfirmed
requests remove a person's events with the person), and clearing the optional
links to a deleted team member or form (ON DELETE SET NULL).
"""

from __future__ import annotations

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION audiences_consentevent_refuse_update() RETURNS trigger AS $$
BEGIN
    IF (NEW.id, NEW.brand_id, NEW.subscriber_id, NEW.kind, NEW.created_at, NEW.actor, NEW.source, NEW.ip,
        NEW.user_agent, NEW.wording_id, NEW.wording_text, NEW.audiences, NEW.details)
       IS DISTINCT FROM
       (OLD.id, OLD.brand_id, OLD.subscriber_id, OLD.kind, OLD.created_at, OLD.actor, OLD.source, OLD.ip,
        OLD.user_agent, OLD.wording_id, OLD.wording_text, OLD.audiences, OLD.details)
       OR (NEW.actor_user_id IS NOT NULL AND NEW.actor_user_id IS DISTINCT FROM OLD.actor_user_id)
       OR (NEW.signup_form_id IS NOT NULL AND NEW.signup_form_id IS DISTINCT FROM OLD.signup_form_id)
    THEN
        RAISE EXCEPTION 'consent events are append-only';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audiences_consentevent_append_only
    BEFORE UPDATE ON audiences_consentevent
    FOR EACH ROW EXECUTE FUNCTION audiences_consentevent_refuse_update();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS audiences_consentevent_append_only ON audiences_consentevent;
DROP FUNCTION IF EXISTS audiences_consentevent_refuse_update();
"""


def forward(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD)


def backward(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("audiences", "0001_initial")]
    operations = [migrations.RunPython(forward, backward)]
