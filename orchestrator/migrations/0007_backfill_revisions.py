import hashlib
import json

from django.db import migrations

_FIELDS = ("image", "command", "env", "ports", "cpu_request", "memory_request")


def backfill(apps, schema_editor):
    """Deployments created before revisions existed get revision 1 (their template as it is);
    replicas that were Running count as ready, as they did before probes existed."""
    Deployment = apps.get_model("orchestrator", "Deployment")
    Revision = apps.get_model("orchestrator", "Revision")
    Replica = apps.get_model("orchestrator", "Replica")
    for deployment in Deployment.objects.filter(current_revision=0).iterator(chunk_size=500):
        template = {
            "image": deployment.image,
            "command": deployment.command,
            "env": deployment.env,
            "ports": deployment.ports,
            "resources": {"cpu_millis": deployment.cpu_request, "memory_bytes": deployment.memory_request},
        }
        digest = hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode())
        spec = {field: getattr(deployment, field) for field in _FIELDS}
        spec.update(
            restart_policy="always", termination_grace_seconds=10, readiness_probe=None, liveness_probe=None
        )
        Revision.objects.create(
            deployment=deployment, number=1, hash=digest.hexdigest()[:16], spec=spec, change_cause="created"
        )
        Deployment.objects.filter(pk=deployment.pk).update(current_revision=1, complete_revision=1)
    Replica.objects.filter(phase="Running").update(ready=True, ready_since=None)


class Migration(migrations.Migration):
    dependencies = [("orchestrator", "0006_rollouts")]
    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
