"""Data migrations keep what users already have."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


@pytest.mark.django_db(transaction=True)
def test_replica_requests_are_backfilled_from_their_templates():
    executor = MigrationExecutor(connection)
    before = [("orchestrator", "0004_replica_requests"), ("nodes", "0002_placement")]
    executor.migrate(before)
    apps = executor.loader.project_state(before).apps
    Namespace = apps.get_model("orchestrator", "Namespace")
    Deployment = apps.get_model("orchestrator", "Deployment")
    Replica = apps.get_model("orchestrator", "Replica")
    namespace, _ = Namespace.objects.get_or_create(name="default")
    deployment = Deployment.objects.create(namespace=namespace, name="old", image="busybox:1")
    template = {
        "image": "busybox:1",
        "command": None,
        "env": {},
        "ports": [{"container": 80, "host": 8080, "protocol": "tcp"}, {"container": 53, "host": None}],
        "resources": {"cpu_millis": 250, "memory_bytes": 64 * 2**20},
    }
    Replica.objects.create(
        namespace=namespace, deployment=deployment, name="old-1", revision="r", template=template
    )
    Replica.objects.create(
        namespace=namespace, deployment=deployment, name="old-2", revision="r",
        template={**template, "ports": [], "resources": {"cpu_millis": None, "memory_bytes": None}},
    )  # fmt: skip

    executor = MigrationExecutor(connection)
    executor.migrate([("orchestrator", "0005_backfill_replica_requests")])
    apps = executor.loader.project_state([("orchestrator", "0005_backfill_replica_requests")]).apps
    rows = {r.name: r for r in apps.get_model("orchestrator", "Replica").objects.all()}
    assert (rows["old-1"].cpu_request, rows["old-1"].memory_request) == (250, 64 * 2**20)
    assert rows["old-1"].host_ports == [[8080, "tcp"]]
    assert (rows["old-2"].cpu_request, rows["old-2"].memory_request, rows["old-2"].host_ports) == (0, 0, [])
    MigrationExecutor(connection).migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
