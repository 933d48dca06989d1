"""The deployment controller against PostgreSQL: idempotent, and explains what it can't do."""

import pytest

from nodes.models import Node
from orchestrator import services
from orchestrator.controllers.deployment import reconcile_deployment
from orchestrator.models import Deployment, Event, Namespace, Replica


def snapshot():
    return sorted(Replica.objects.values_list("name", "node_id", "phase", "message", "updated_at"))


def create(name="web", replicas=4, **spec):
    return services.do_create_deployment(
        Namespace.objects.get(name="default"),
        {"name": name, "image": "busybox:1", "replicas": replicas, **spec},
        None,
    )


def test_reconcile_twice_in_a_row_changes_nothing(ready_nodes, django_capture_on_commit_callbacks):
    ready_nodes("h1", "h2")
    deployment = create()
    with django_capture_on_commit_callbacks(execute=True):
        reconcile_deployment(deployment.pk)
    first = snapshot()
    events = Event.objects.count()
    deployment.refresh_from_db()
    status = (deployment.observed_generation, deployment.conditions)
    assert len(first) == 4
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        reconcile_deployment(deployment.pk)
    assert snapshot() == first
    assert Event.objects.count() == events
    deployment.refresh_from_db()
    assert (deployment.observed_generation, deployment.conditions) == status
    assert callbacks == []  # nothing dispatched, nothing broadcast


def test_replicas_spread_and_scale_down(ready_nodes):
    ready_nodes("h1", "h2")
    deployment = create(replicas=4)
    reconcile_deployment(deployment.pk)
    assert sorted(Replica.objects.values_list("node__name", flat=True)) == ["h1", "h1", "h2", "h2"]
    services.do_scale_deployment(deployment, 1, None)
    reconcile_deployment(deployment.pk)
    assert Replica.objects.filter(phase=Replica.Phase.TERMINATING).count() == 3
    assert Replica.objects.exclude(phase=Replica.Phase.TERMINATING).count() == 1


def test_unplaceable_replicas_wait_with_a_reason_and_an_event(ready_nodes):
    (node,) = ready_nodes("h1")
    Node.objects.filter(pk=node.pk).update(status=Node.Status.NOT_READY)
    deployment = create(replicas=2)
    reconcile_deployment(deployment.pk)
    messages = set(Replica.objects.values_list("message", flat=True))
    assert messages == {"0/1 nodes available: 1 node not ready"}
    warning = Event.objects.get(reason="FailedScheduling")  # one for the deployment, not one per replica
    assert warning.type == Event.Type.WARNING and warning.kind == "Deployment"
    assert warning.message == "2 replica(s) pending: 0/1 nodes available: 1 node not ready"
    deployment.refresh_from_db()
    progressing = next(c for c in deployment.conditions if c["type"] == "Progressing")
    assert progressing["reason"] == "ReplicasPending" and "node not ready" in progressing["message"]
    # Reconciling again with nothing new to say records nothing more.
    reconcile_deployment(deployment.pk)
    assert list(Event.objects.filter(reason="FailedScheduling").values_list("count", flat=True)) == [1]


def test_host_port_conflicts_keep_the_extra_replica_pending(ready_nodes):
    ready_nodes("h1", "h2")
    deployment = create(replicas=3, ports=[{"container": 80, "host": 8080, "protocol": "tcp"}])
    reconcile_deployment(deployment.pk)
    assert Replica.objects.filter(node__isnull=False).count() == 2
    assert (
        Replica.objects.get(node__isnull=True).message == "0/2 nodes available: 2 host port 8080/tcp in use"
    )


def test_a_deleted_deployment_goes_once_its_replicas_are_gone(ready_nodes):
    ready_nodes("h1")
    deployment = create(replicas=2)
    reconcile_deployment(deployment.pk)
    services.do_delete_deployment(deployment, None)
    reconcile_deployment(deployment.pk)
    assert Replica.objects.filter(phase=Replica.Phase.TERMINATING).count() == 2
    assert Deployment.objects.filter(pk=deployment.pk).exists()
    Replica.objects.all().delete()  # what the agent's reports do once the containers are gone
    reconcile_deployment(deployment.pk)
    assert not Deployment.objects.filter(pk=deployment.pk).exists()


def test_a_vanished_deployment_is_a_no_op(db):
    reconcile_deployment(987654)


@pytest.mark.parametrize("phase", ["Running", "Starting"])
def test_a_spec_change_rolls_to_new_replicas_before_retiring_old(ready_nodes, phase):
    ready_nodes("h1", "h2")
    surge_only = {"type": "RollingUpdate", "max_surge": 2, "max_unavailable": 0}
    deployment = create(replicas=2, update_strategy=surge_only)
    reconcile_deployment(deployment.pk)
    Replica.objects.update(phase=Replica.Phase.RUNNING, ready=True)
    services.do_update_deployment(deployment, {"image": "busybox:2"}, None)
    reconcile_deployment(deployment.pk)
    assert Replica.objects.filter(phase=Replica.Phase.RUNNING).count() == 2  # old ones still serve
    Replica.objects.filter(template__image="busybox:2").update(phase=phase, ready=phase == "Running")
    reconcile_deployment(deployment.pk)
    retired = Replica.objects.filter(phase=Replica.Phase.TERMINATING).count()
    assert retired == (2 if phase == "Running" else 0)


def test_a_replica_name_taken_elsewhere_in_the_namespace_is_drawn_again(ready_nodes, monkeypatch):
    from orchestrator.controllers import deployment as controller

    ready_nodes("h1")
    other = create(name="other", replicas=0)
    Replica.objects.create(
        namespace=other.namespace, deployment=other, name="web-aaaaa", revision="x", template={}
    )
    draws = iter(["aaaaa", "aaaaa", "bbbbb"])  # twice a name another deployment holds
    monkeypatch.setattr(controller, "_replica_name", lambda d, taken: f"{d.name}-{next(draws)}")
    reconcile_deployment(create(name="web", replicas=1).pk)
    assert sorted(Replica.objects.values_list("name", flat=True)) == ["web-aaaaa", "web-bbbbb"]
