from django.db import migrations

# Every row's `changed_xid` is the transaction that last inserted it or moved its
# resource_version, whichever statement did (triggers: no writer can forget it). The
# scheduler's snapshot cache then reads only the nodes changed by transactions that had
# not finished at its previous read (orchestrator/scheduling/snapshot.py, SnapshotCache),
# rather than every node's version at every batch.
FORWARD = """
ALTER TABLE nodes_node ADD COLUMN changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE FUNCTION nodes_node_mark_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_xid := pg_current_xact_id();
    RETURN NEW;
END
$$;
CREATE TRIGGER nodes_node_inserted BEFORE INSERT ON nodes_node
    FOR EACH ROW EXECUTE FUNCTION nodes_node_mark_changed();
CREATE TRIGGER nodes_node_version_moved BEFORE UPDATE ON nodes_node
    FOR EACH ROW WHEN (OLD.resource_version IS DISTINCT FROM NEW.resource_version)
    EXECUTE FUNCTION nodes_node_mark_changed();
"""

REVERSE = """
DROP TRIGGER nodes_node_version_moved ON nodes_node;
DROP TRIGGER nodes_node_inserted ON nodes_node;
DROP FUNCTION nodes_node_mark_changed();
ALTER TABLE nodes_node DROP COLUMN changed_xid;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("nodes", "0003_drain"),
    ]

    operations = [migrations.RunSQL(FORWARD, reverse_sql=REVERSE)]
