from django.db import migrations


def backfill(apps, schema_editor):
    """Replicas created before the request columns existed: copy them from the template each
    replica recorded, so the scheduler counts what they really occupy."""
    Replica = apps.get_model("orchestrator", "Replica")
    batch = []
    for replica in Replica.objects.all().iterator(chunk_size=1000):
        resources = (replica.template or {}).get("resources") or {}
        ports = (replica.template or {}).get("ports") or []
        replica.cpu_request = resources.get("cpu_millis") or 0
        replica.memory_request = resources.get("memory_bytes") or 0
        replica.host_ports = sorted([p["host"], p.get("protocol", "tcp")] for p in ports if p.get("host"))
        batch.append(replica)
        if len(batch) == 1000:
            Replica.objects.bulk_update(batch, ["cpu_request", "memory_request", "host_ports"])
            batch = []
    if batch:
        Replica.objects.bulk_update(batch, ["cpu_request", "memory_request", "host_ports"])


class Migration(migrations.Migration):
    dependencies = [("orchestrator", "0004_replica_requests")]
    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
