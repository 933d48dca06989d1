"""Revisions, rollbacks, rollout failure, node loss and drains, against PostgreSQL."""

from datetime import timedelta

import pytest
from django.utils import timezone

from nodes.models import Node
from nodes.services import do_drain_node, do_uncordon_node
from orchestrator.controllers.deployment import reconcile_deployment
from orchestrator.models import Deployment, Event, Replica

URL = "/api/v1/namespaces/default/deployments/"
SPEC = {"name": "web", "image": "berth-test/busybox:1", "replicas": 2, "command": ["sleep", "3600"]}


def deployment(name="web"):
    return Deployment.live.get(name=name)


def converge(name="web", rounds=6):
    """Reconcile, and play the agents: every placed replica runs and is ready."""
    for _ in range(rounds):
        reconcile_deployment(deployment(name).pk)
        placed = Replica.objects.filter(node__isnull=False).exclude(phase=Replica.Phase.TERMINATING)
        placed.filter(phase=Replica.Phase.PENDING).update(
            phase=Replica.Phase.RUNNING, ready=True, ready_since=timezone.now() - timedelta(hours=1)
        )
        Replica.objects.filter(phase=Replica.Phase.TERMINATING).delete()  # the agents stopped them


def images():
    return sorted(
        Replica.objects.exclude(phase=Replica.Phase.TERMINATING).values_list("template__image", flat=True)
    )


def test_template_changes_create_revisions_and_scaling_does_not(api, ready_nodes):
    ready_nodes("h1", "h2")
    assert api.post(URL, SPEC, format="json").status_code == 201
    assert api.patch(URL + "web/", {"replicas": 3}, format="json").status_code == 200
    assert api.patch(URL + "web/", {"image": "berth-test/busybox:2"}, format="json").status_code == 200
    assert api.patch(URL + "web/", {"env": {"A": "1"}}, format="json").status_code == 200
    history = api.get(URL + "web/revisions/").json()
    assert [r["revision"] for r in history] == [3, 2, 1]
    assert [r["current"] for r in history] == [True, False, False]
    assert history[1]["spec"]["image"] == "berth-test/busybox:2"
    assert history[0]["change_cause"] == "changed env"
    assert api.get(URL + "web/").json()["status"]["revision"] == 3


def test_rollback_to_previous_and_to_a_given_revision(api, ready_nodes):
    ready_nodes("h1", "h2")
    api.post(URL, SPEC, format="json")
    converge()
    api.patch(URL + "web/", {"image": "berth-test/busybox:2"}, format="json")
    converge()
    assert images() == ["berth-test/busybox:2"] * 2

    response = api.post(URL + "web/rollback/", {}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["image"] == "berth-test/busybox:1"
    converge()
    assert images() == ["berth-test/busybox:1"] * 2
    assert api.get(URL + "web/revisions/").json()[0]["change_cause"] == "rollback to revision 1"

    response = api.post(URL + "web/rollback/", {"revision": 2}, format="json")
    assert response.status_code == 200 and response.json()["image"] == "berth-test/busybox:2"
    assert Event.objects.filter(reason="RolledBack").count() == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"revision": 42}, "revision 42 not found; this deployment has revisions 1, 2"),
        ({"revision": 2}, "revision 2 is what the deployment runs already"),
        ({"revision": "two"}, "A valid integer is required."),
        ({"revison": 1}, "unknown field"),
    ],
)
def test_rollback_bad_input_names_the_field(api, ready_nodes, body, message):
    api.post(URL, SPEC, format="json")
    api.patch(URL + "web/", {"image": "berth-test/busybox:2"}, format="json")
    response = api.post(URL + "web/rollback/", body, format="json")
    assert response.status_code == 400
    field, errors = next(iter(response.json().items()))
    assert field == next(iter(body)) and message in errors[0]


def test_rollback_without_history_is_refused(api):
    api.post(URL, SPEC, format="json")
    response = api.post(URL + "web/rollback/", {}, format="json")
    assert response.status_code == 400
    assert response.json() == {"revision": ["there is no earlier revision to roll back to"]}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            {"readiness_probe": {"http_get": {"port": 80}, "period_seconds": -1}},
            "readiness_probe",
            "period_seconds",
        ),
        (
            {"readiness_probe": {"tcp_socket": {"port": 80}, "exec": {"command": ["true"]}}},
            "readiness_probe",
            "exactly one",
        ),
        ({"readiness_probe": {"initial_delay_seconds": 3}}, "readiness_probe", "exactly one"),
        ({"liveness_probe": {"exec": {"command": []}}}, "liveness_probe", "command"),
        (
            {"liveness_probe": {"tcp_socket": {"port": 1}, "success_threshold": 2}},
            "liveness_probe",
            "must be 1",
        ),
        (
            {"readiness_probe": {"http_get": {"port": 80, "path": "health"}}},
            "readiness_probe",
            "start with '/'",
        ),
        ({"update_strategy": {"max_surge": 0, "max_unavailable": "0%"}}, "update_strategy", "both be zero"),
        ({"update_strategy": {"max_surge": "150%"}}, "update_strategy", "0% to 100%"),
        ({"update_strategy": {"max_surge": -1}}, "update_strategy", "negative"),
        ({"update_strategy": {"type": "BlueGreen"}}, "update_strategy", "not a valid choice"),
        ({"restart_policy": "sometimes"}, "restart_policy", "not a valid choice"),
        ({"termination_grace_seconds": -5}, "termination_grace_seconds", "greater than or equal to 0"),
        (
            {"progress_deadline_seconds": 5, "min_ready_seconds": 10},
            "progress_deadline_seconds",
            "longer than",
        ),
        ({"on_failure": "explode"}, "on_failure", "not a valid choice"),
    ],
)
def test_bad_health_and_rollout_settings_name_the_field(api, change, field, message):
    response = api.post(URL, {**SPEC, **change}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body, body
    assert message in str(body[field]), body


def test_probes_and_lifecycle_reach_the_replica_template_with_defaults(api, ready_nodes):
    ready_nodes("h1")
    probe = {"http_get": {"port": 8080, "path": "/ready"}, "period_seconds": 2}
    response = api.post(
        URL,
        {**SPEC, "readiness_probe": probe, "restart_policy": "on-failure", "termination_grace_seconds": 3},
        format="json",
    )
    assert response.status_code == 201, response.content
    expected = {
        "http_get": {"port": 8080, "path": "/ready"},
        "initial_delay_seconds": 0,
        "period_seconds": 2,
        "timeout_seconds": 1,
        "failure_threshold": 3,
        "success_threshold": 1,
    }
    assert response.json()["readiness_probe"] == expected
    reconcile_deployment(deployment().pk)
    entry = Replica.objects.select_related("deployment", "namespace").first().desired_entry()
    assert entry["readiness_probe"] == expected
    assert (entry["restart_policy"], entry["termination_grace_seconds"]) == ("on-failure", 3)
    assert "liveness_probe" not in entry  # defaults stay out of the template (and its hash)


def test_rolling_update_never_drops_below_the_availability_floor(api, ready_nodes):
    ready_nodes("h1", "h2", "h3")
    strategy = {"type": "RollingUpdate", "max_surge": 1, "max_unavailable": 1}
    api.post(URL, {**SPEC, "replicas": 4, "update_strategy": strategy}, format="json")
    converge()
    api.patch(URL + "web/", {"image": "berth-test/busybox:2"}, format="json")
    reconcile_deployment(deployment().pk)
    # One old replica may stop (4 - 1 available), leaving room for two new ones (4 + 1 surge).
    assert Replica.objects.filter(phase=Replica.Phase.TERMINATING).count() == 1
    assert Replica.objects.filter(phase__in=Replica.ACTIVE).count() == 5
    status = api.get(URL + "web/").json()["status"]
    assert (status["updated_replicas"], status["available_replicas"]) == (2, 3)
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "ReplicasUpdating"
    converge()
    assert images() == ["berth-test/busybox:2"] * 4
    progressing = next(c for c in deployment().conditions if c["type"] == "Progressing")
    assert progressing["reason"] == "NewReplicasAvailable"


def test_a_rollout_without_progress_fails_and_rolls_itself_back(api, ready_nodes):
    ready_nodes("h1", "h2")
    api.post(URL, {**SPEC, "on_failure": "rollback", "progress_deadline_seconds": 30}, format="json")
    converge()
    api.patch(URL + "web/", {"image": "berth-test/broken:1"}, format="json")
    reconcile_deployment(deployment().pk)
    broken = Replica.objects.filter(template__image="berth-test/broken:1")
    broken.update(phase=Replica.Phase.FAILED, message="image unavailable")
    reconcile_deployment(deployment().pk)
    assert deployment().image == "berth-test/broken:1"  # still within the deadline
    Deployment.objects.filter(pk=deployment().pk).update(progress_at=timezone.now() - timedelta(seconds=31))
    reconcile_deployment(deployment().pk)
    rolled = deployment()
    assert rolled.image == "berth-test/busybox:1"
    assert rolled.current_revision == 3
    failed = Event.objects.get(reason="RolloutFailed")
    assert "no progress for 30 s" in failed.message
    assert Event.objects.filter(reason="RolledBack", actor="berth").exists()
    converge()
    assert images() == ["berth-test/busybox:1"] * 2


def test_crash_looping_new_replicas_fail_the_rollout_but_a_completed_one_is_never_rolled_back(
    api, ready_nodes
):
    ready_nodes("h1")
    api.post(URL, {**SPEC, "replicas": 1, "on_failure": "rollback"}, format="json")
    converge()
    api.patch(URL + "web/", {"command": ["false"]}, format="json")
    reconcile_deployment(deployment().pk)
    Replica.objects.filter(template__command=["false"]).update(phase=Replica.Phase.FAILED, restart_count=3)
    reconcile_deployment(deployment().pk)
    assert deployment().command == ["sleep", "3600"]
    assert "keep crashing" in Event.objects.get(reason="RolloutFailed").message

    # Revision 3 (the rollback) completes; a crash later is not a failed rollout.
    converge()
    Replica.objects.update(phase=Replica.Phase.FAILED, restart_count=5, ready=False)
    reconcile_deployment(deployment().pk)
    assert deployment().current_revision == 3


def test_replicas_of_a_lost_node_are_replaced_after_the_toleration(ready_nodes):
    h1, h2 = ready_nodes("h1", "h2")
    from orchestrator import services
    from orchestrator.models import Namespace

    services.do_create_deployment(
        Namespace.objects.get(name="default"),
        {"name": "web", "image": "busybox:1", "replicas": 2, "node_loss_toleration_seconds": 5},
        None,
    )
    converge()
    on_h1 = Replica.objects.get(node=h1)
    lost_at = timezone.now()
    Node.objects.filter(pk=h1.pk).update(status=Node.Status.NOT_READY, status_changed_at=lost_at)
    Replica.objects.filter(node=h1).update(phase=Replica.Phase.UNKNOWN, ready=False)
    recheck = reconcile_deployment(deployment().pk)
    assert 4 < recheck <= 5
    assert Replica.objects.get(pk=on_h1.pk).phase == Replica.Phase.UNKNOWN
    Node.objects.filter(pk=h1.pk).update(status_changed_at=lost_at - timedelta(seconds=6))
    reconcile_deployment(deployment().pk)
    fenced = Replica.objects.get(pk=on_h1.pk)
    assert fenced.phase == Replica.Phase.TERMINATING and "replaced elsewhere" in fenced.message
    replacement = Replica.objects.filter(phase=Replica.Phase.PENDING).get()
    assert replacement.node_id == h2.pk
    # The fenced replica is not in h1's desired set any more: its agent stops it on return.
    from orchestrator.dispatch import desired_sets

    assert fenced.name not in [entry["name"] for entry in dict(desired_sets([h1.pk]))[h1.pk]["replicas"]]


def test_when_most_of_a_large_fleet_is_lost_its_replicas_wait_instead_of_moving(ready_nodes):
    """Kubernetes' zone disruption rule: 55 % of 50 or more nodes NotReady at once is a
    control-plane or network failure far more often than a server one. Replacing stops
    (said on the replicas and as an event), and resumes once fewer are NotReady."""
    from orchestrator import services
    from orchestrator.controllers.deployment import DISRUPTION_MIN_NODES, PAUSED_MESSAGE
    from orchestrator.models import Namespace

    nodes = ready_nodes(*(f"h{i:02d}" for i in range(DISRUPTION_MIN_NODES + 10)))
    services.do_create_deployment(
        Namespace.objects.get(name="default"),
        {"name": "web", "image": "busybox:1", "replicas": 4, "node_loss_toleration_seconds": 0},
        None,
    )
    converge()
    placed_on = set(Replica.objects.values_list("node_id", flat=True))
    lost = [n.pk for n in nodes if n.pk in placed_on] + [n.pk for n in nodes if n.pk not in placed_on][:30]
    assert len(lost) == 34  # 57 % of 60
    a_minute_ago = timezone.now() - timedelta(minutes=1)
    Node.objects.filter(pk__in=lost).update(status=Node.Status.NOT_READY, status_changed_at=a_minute_ago)
    Replica.objects.update(phase=Replica.Phase.UNKNOWN, ready=False)

    recheck = reconcile_deployment(deployment().pk)
    assert recheck is not None and recheck <= 5
    assert not Replica.objects.filter(phase=Replica.Phase.TERMINATING).exists()
    assert set(Replica.objects.values_list("message", flat=True)) == {PAUSED_MESSAGE}
    event = Event.objects.get(reason="ReplacementPaused")
    assert (
        "4 replica(s) on lost nodes wait: replacement paused: 34 of 60 nodes turned NotReady" in event.message
    )

    # One of them was lost longer than the window ago: its replica goes, the others wait
    # (33 of the 59 nodes that count are still a disruption).
    first = Replica.objects.order_by("pk").first()
    Node.objects.filter(pk=first.node_id).update(status_changed_at=timezone.now() - timedelta(minutes=6))
    reconcile_deployment(deployment().pk)
    assert list(Replica.objects.filter(phase=Replica.Phase.TERMINATING)) == [first]

    Node.objects.filter(pk__in=lost[4:]).update(status=Node.Status.READY)  # 4 of 60 still lost
    reconcile_deployment(deployment().pk)
    assert Replica.objects.filter(phase=Replica.Phase.TERMINATING).count() == 4
    assert Replica.objects.filter(phase=Replica.Phase.PENDING, node__isnull=False).count() == 4


def test_drain_moves_replicas_away_honouring_max_unavailable(ready_nodes):
    h1, _, _ = ready_nodes("h1", "h2", "h3")
    from orchestrator import services
    from orchestrator.models import Namespace

    strategy = {"type": "RollingUpdate", "max_surge": 0, "max_unavailable": 1}
    services.do_create_deployment(
        Namespace.objects.get(name="default"),
        {"name": "web", "image": "busybox:1", "replicas": 3, "update_strategy": strategy},
        None,
    )
    converge()
    assert Replica.objects.filter(node=h1).count() == 1
    do_drain_node(h1, None)
    reconcile_deployment(deployment().pk)
    # Without surge, one goes first; its replacement is placed on another node.
    assert Replica.objects.filter(node=h1, phase=Replica.Phase.TERMINATING).count() == 1
    converge()
    assert not Replica.objects.filter(node=h1).exists()
    assert Replica.objects.filter(phase=Replica.Phase.RUNNING).count() == 3
    h1.refresh_from_db()
    assert h1.unschedulable and h1.drain_started_at is not None
    do_uncordon_node(h1, None)
    h1.refresh_from_db()
    assert not h1.unschedulable and h1.drain_started_at is None


def test_drain_api(api, ready_nodes):
    ready_nodes("h1")
    response = api.post("/api/v1/nodes/h1/drain")
    assert response.status_code == 202
    assert response.json()["unschedulable"] is True and response.json()["drain_started_at"]
    assert Event.objects.filter(reason="Draining").exists()


def test_paused_deployment_does_not_roll_until_resumed(api, ready_nodes):
    ready_nodes("h1", "h2")
    api.post(URL, SPEC, format="json")
    converge()
    assert api.post(URL + "web/pause/").json()["paused"] is True
    api.patch(URL + "web/", {"image": "berth-test/busybox:2"}, format="json")
    converge()
    assert images() == ["berth-test/busybox:1"] * 2
    progressing = next(c for c in deployment().conditions if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("Unknown", "DeploymentPaused")
    assert api.post(URL + "web/resume/").json()["paused"] is False
    converge()
    assert images() == ["berth-test/busybox:2"] * 2


def test_min_ready_seconds_delays_availability(ready_nodes):
    ready_nodes("h1")
    from orchestrator import services
    from orchestrator.models import Namespace

    services.do_create_deployment(
        Namespace.objects.get(name="default"),
        {"name": "web", "image": "busybox:1", "replicas": 1, "min_ready_seconds": 10},
        None,
    )
    reconcile_deployment(deployment().pk)
    Replica.objects.update(phase=Replica.Phase.RUNNING, ready=True, ready_since=timezone.now())
    recheck = reconcile_deployment(deployment().pk)
    assert 9 < recheck <= 10
    assert deployment().available_replicas == 0 and deployment().ready_replicas == 1
    Replica.objects.update(ready_since=timezone.now() - timedelta(seconds=11))
    reconcile_deployment(deployment().pk)
    assert deployment().available_replicas == 1


def test_dashboard_shows_revisions_and_rolls_back(api, user, client):
    api.post(URL, SPEC, format="json")
    api.patch(URL + "web/", {"image": "berth-test/busybox:2"}, format="json")
    client.force_login(user)
    page = client.get("/namespaces/default/deployments/web/").content.decode()
    assert 'data-revision="2"' in page and "Roll back to 1" in page and "Roll back to 2" not in page
    response = client.post("/namespaces/default/deployments/web/rollback/", {"revision": "7"}, follow=True)
    assert "revision 7 not found" in response.content.decode()
    client.post("/namespaces/default/deployments/web/rollback/", {"revision": "1"})
    assert deployment().image == "berth-test/busybox:1" and deployment().current_revision == 3
    client.post("/namespaces/default/deployments/web/pause/", {"paused": "true"})
    assert deployment().paused
    assert "Resume rollout" in client.get("/namespaces/default/deployments/web/").content.decode()
