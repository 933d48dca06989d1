"""Requested reconciles fold into batches: one task places many deployments against one
snapshot scan and sends each node one desired set (orchestrator.tasks.reconcile_pending)."""

from unittest import mock

import kombu.exceptions
import pytest
from django.db import OperationalError

from orchestrator import services, tasks
from orchestrator.controllers import deployment as controller
from orchestrator.models import Event, Namespace, Replica
from orchestrator.scheduling import snapshot
from orchestrator.scheduling.snapshot import snapshot_held, take_snapshot


@pytest.fixture
def queued(monkeypatch):
    """Batch tasks queued (run by the test itself, not by a worker); a clean pending set."""
    marks = tasks._queued_marks()
    marks.delete(tasks._PENDING, tasks._BACKGROUND, tasks._BATCH_QUEUED)
    calls: list[str] = []  # each queued task's token
    monkeypatch.setattr(tasks.reconcile_pending, "delay", calls.append)
    yield calls
    marks.delete(tasks._PENDING, tasks._BACKGROUND, tasks._BATCH_QUEUED)


@pytest.fixture
def dispatch_queue(monkeypatch):
    """Dispatch tasks queued (run by the test itself, not by a worker); no nodes waiting."""
    marks = tasks._queued_marks()
    marks.delete(tasks._DISPATCH_PENDING, tasks._DISPATCH_QUEUED)
    calls: list[tuple] = []
    monkeypatch.setattr(tasks.dispatch_desired_sets, "delay", lambda *args: calls.append(args))
    yield calls
    marks.delete(tasks._DISPATCH_PENDING, tasks._DISPATCH_QUEUED)


@pytest.fixture
def dispatched(monkeypatch, dispatch_queue):
    """The node lists each desired-set dispatch a batch handed to the worker was for; the
    worker's task is run here once the batch is done."""
    sent: list[list[int]] = []
    real = tasks.dispatch_nodes

    def spy(node_ids, **kwargs):
        sent.append(sorted(node_ids))
        real(node_ids, **kwargs)

    monkeypatch.setattr(tasks, "dispatch_nodes", spy)
    return sent


def create(name, replicas):
    namespace = Namespace.objects.get(name="default")
    spec = {"name": name, "image": "busybox:1", "replicas": replicas, "cpu_request": 100}
    return services.do_create_deployment(namespace, spec, None)


@pytest.mark.django_db(transaction=True)
def test_requests_fold_into_one_batch_that_sends_each_node_one_frame(ready_nodes, queued, dispatched):
    h1, h2 = ready_nodes("h1", "h2")
    deployments = [create(f"web{i}", 2) for i in range(3)]
    assert len(queued) == 1  # three requests, one task
    tasks.reconcile_pending()
    placed = Replica.objects.filter(node__isnull=False)
    assert placed.count() == 6
    assert {r.deployment_id for r in placed} == {d.pk for d in deployments}
    assert dispatched == []  # the scheduler only hands the nodes over
    tasks.dispatch_desired_sets()  # the worker
    assert dispatched == [sorted([h1.pk, h2.pk])]  # once, for the whole batch
    assert not tasks._queued_marks().scard(tasks._PENDING)


@pytest.mark.django_db(transaction=True)
def test_more_than_a_batch_queues_the_next_batch_as_it_ends(ready_nodes, queued, monkeypatch):
    ready_nodes("h1")
    monkeypatch.setattr(tasks, "BATCH", 2)
    for i in range(3):
        create(f"web{i}", 1)
    assert len(queued) == 1
    tasks.reconcile_pending()
    assert len(queued) == 2  # one left: the next batch
    assert Replica.objects.filter(node__isnull=False).count() == 2
    tasks.reconcile_pending()
    assert Replica.objects.filter(node__isnull=False).count() == 3


@pytest.mark.django_db(transaction=True)
def test_one_batch_runs_at_a_time_and_queues_the_next_as_it_ends(ready_nodes, queued, monkeypatch):
    ready_nodes("h1")
    create("first", 1)
    assert len(queued) == 1
    real = tasks._reconcile_deployment
    during: list[int] = []

    def pass_while_asked(pk, effects):
        if not during:
            create("late", 1)  # asked for while the batch runs
            during.append(len(queued))
        return real(pk, effects)

    monkeypatch.setattr(tasks, "_reconcile_deployment", pass_while_asked)
    tasks.reconcile_pending()
    assert during == [1]  # no second batch beside this one
    assert len(queued) == 2  # queued as it ended
    assert tasks._queued_marks().exists(tasks._BATCH_QUEUED)  # held for the queued one
    tasks.reconcile_pending()
    assert Replica.objects.filter(node__isnull=False).count() == 2
    assert len(queued) == 2  # nothing waits: nothing queued
    assert not tasks._queued_marks().exists(tasks._BATCH_QUEUED)


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_mark_a_resync_took_over_queues_no_other(ready_nodes, queued, monkeypatch):
    """The resync queues a batch even while one runs (its task may have died); the running
    one then leaves the going on to it: one task, not one more per resync."""
    ready_nodes("h1")
    create("first", 1)
    (first,) = queued
    real = tasks._reconcile_deployment
    resynced: list[bool] = []

    def pass_with_a_resync(pk, effects):
        if not resynced:
            resynced.append(True)
            tasks.resync()  # every deployment to the background set, a batch forced out
        return real(pk, effects)

    monkeypatch.setattr(tasks, "_reconcile_deployment", pass_with_a_resync)
    tasks.reconcile_pending(first)
    assert len(queued) == 2  # the resync's, and none from the batch that ended
    tasks.reconcile_pending(queued[1])  # the background passes; then nothing waits
    assert len(queued) == 2
    assert not tasks._queued_marks().exists(tasks._BATCH_QUEUED)


@pytest.mark.django_db(transaction=True)
def test_a_pass_that_fails_for_its_own_reasons_does_not_stop_the_batch(
    ready_nodes, queued, monkeypatch, caplog
):
    ready_nodes("h1")
    broken, fine = create("broken", 1), create("fine", 1)
    real = tasks._reconcile_deployment

    def pass_(pk, effects):
        if pk == broken.pk:
            raise ValueError("a bug this deployment runs into")
        return real(pk, effects)

    monkeypatch.setattr(tasks, "_reconcile_deployment", pass_)
    tasks.reconcile_pending(queued[0])
    assert Replica.objects.filter(deployment=fine, node__isnull=False).count() == 1
    assert f"the pass over deployment {broken.pk} failed" in caplog.text
    assert not tasks._queued_marks().scard(tasks._PENDING)  # the resync tries it again, not a hot loop


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_fails_frees_the_mark_without_queuing_another(ready_nodes, queued, monkeypatch):
    """Its retry takes what waits; queuing one at once would loop while the database is down."""
    ready_nodes("h1")
    create("web", 1)

    def down(pk, effects=None):
        raise OperationalError("the server closed the connection")

    monkeypatch.setattr(tasks, "_reconcile_deployment", down)
    with pytest.raises(OperationalError):
        tasks.reconcile_pending()
    assert len(queued) == 1
    assert not tasks._queued_marks().exists(tasks._BATCH_QUEUED)
    create("other", 1)  # a request meanwhile queues a batch
    assert len(queued) == 2


@pytest.mark.django_db(transaction=True)
def test_a_pass_that_fails_puts_the_rest_back_to_wait(ready_nodes, queued, monkeypatch):
    ready_nodes("h1")
    first, second, third = (create(f"web{i}", 1) for i in range(3))
    real = controller.reconcile_deployment

    def flaky(pk, effects=None):
        if pk == second.pk:
            raise OperationalError("the server closed the connection")
        return real(pk, effects)

    monkeypatch.setattr(tasks, "_reconcile_deployment", flaky)
    with pytest.raises(OperationalError):
        tasks.reconcile_pending()
    waiting = {int(pk) for pk in tasks._queued_marks().smembers(tasks._PENDING)}
    assert waiting == {second.pk, third.pk}
    assert Replica.objects.filter(deployment=first, node__isnull=False).count() == 1


@pytest.mark.django_db(transaction=True)
def test_placements_this_worker_committed_are_adopted_not_read_again(
    ready_nodes, django_assert_max_num_queries
):
    ready_nodes("h1", "h2")
    snapshot.forget_nodes()
    web = create("web", 3)
    take_snapshot(web.pk, cached=True)  # the cache has every node
    controller.reconcile_deployment(web.pk)
    # the versions scan and this deployment's counts: no node row read again
    with django_assert_max_num_queries(2):
        cached = take_snapshot(web.pk, cached=True)
    fresh = take_snapshot(web.pk)
    assert {n.name: (n.requested_cpu, n.resource_version, n.deployment_counts[web.pk]) for n in cached} == {
        n.name: (n.requested_cpu, n.resource_version, n.deployment_counts[web.pk]) for n in fresh
    }
    assert sum(n.requested_cpu for n in cached) == 300


@pytest.mark.django_db(transaction=True)
def test_a_placing_pass_within_a_batch_is_eight_round_trips(ready_nodes, django_assert_num_queries):
    """BEGIN, the deployment locked, its replicas read, its event, the claim, the replicas
    inserted (their names checked by the insert itself), its status, COMMIT
    (docs/scheduling.md)."""
    ready_nodes("h1", "h2")
    first, second = create("first", 2), create("second", 3)
    with snapshot_held():
        controller.reconcile_deployment(first.pk, controller.Effects())  # scans the versions
        with django_assert_num_queries(8):
            controller.reconcile_deployment(second.pk, controller.Effects())
    assert Replica.objects.filter(deployment=second, node__isnull=False).count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_pass_stopping_many_replicas_costs_what_one_stopping_two_does(ready_nodes):
    """Marking replicas Terminating is one statement, however many (a deleted 10,000-replica
    deployment took 10,000 UPDATEs, 13 % of the scheduler's samples in a 3-round benchmark)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    ready_nodes("h1", "h2")
    small, big = create("small", 2), create("big", 12)
    controller.reconcile_deployment(small.pk)
    controller.reconcile_deployment(big.pk)
    Replica.objects.update(phase=Replica.Phase.RUNNING, ready=True)
    statements = {}
    for deployment in (small, big):
        services.do_delete_deployment(deployment, None)
        with CaptureQueriesContext(connection) as captured:
            controller.reconcile_deployment(deployment.pk, controller.Effects())
        statements[deployment.name] = len(captured)
    assert statements["big"] == statements["small"], statements
    stopping = Replica.objects.filter(deployment=big)
    assert stopping.count() == 12
    assert set(stopping.values_list("phase", "ready", "message")) == {
        (Replica.Phase.TERMINATING, False, "stopping: no longer wanted")
    }


@pytest.mark.django_db(transaction=True)
def test_within_a_batch_only_the_first_pass_scans(ready_nodes, django_assert_max_num_queries):
    h1, _h2 = ready_nodes("h1", "h2")
    snapshot.forget_nodes()
    with snapshot_held():
        assert len(take_snapshot(None, cached=True)) == 2
        with django_assert_max_num_queries(0):
            take_snapshot(None, cached=True)
        snapshot.forget_nodes([h1.pk])  # a pass placed onto h1 and did not commit
        with django_assert_max_num_queries(3):  # h1's row, its usage, its ports
            nodes = take_snapshot(None, cached=True)
        assert sorted(n.name for n in nodes) == ["h1", "h2"]


@pytest.mark.django_db(transaction=True)
def test_the_resync_queues_a_batch_even_past_a_mark_left_by_a_killed_worker(ready_nodes, queued):
    ready_nodes("h1")
    web = create("web", 1)
    queued.clear()
    tasks._queued_marks().set(tasks._BATCH_QUEUED, 1, ex=60)  # its task died with a worker
    tasks.request_reconcile(web.pk)
    assert queued == []  # an ordinary request trusts the mark
    tasks.resync()
    assert len(queued) == 1
    tasks.reconcile_pending()
    assert Replica.objects.filter(deployment=web, node__isnull=False).count() == 1


def record_passes(monkeypatch) -> list[int]:
    """The deployments the batch task passes over, in order."""
    passes: list[int] = []
    real = tasks._reconcile_deployment
    monkeypatch.setattr(
        tasks, "_reconcile_deployment", lambda pk, effects: passes.append(pk) or real(pk, effects)
    )
    return passes


@pytest.mark.parametrize(
    "asked_by",
    [
        pytest.param(lambda ids: tasks.request_reconciles(ids, background=True), id="agents-reports"),
        pytest.param(lambda ids: tasks.resync(), id="the-resync"),
    ],
)
@pytest.mark.django_db(transaction=True)
def test_background_passes_wait_behind_new_work(ready_nodes, queued, monkeypatch, asked_by):
    ready_nodes("h1")
    monkeypatch.setattr(tasks, "BATCH", 2)
    background = [create(f"seen{i}", 0) for i in range(3)]
    tasks._queued_marks().delete(tasks._PENDING)
    asked_by([d.pk for d in background])
    new = [create(f"new{i}", 1) for i in range(2)]
    passes = record_passes(monkeypatch)
    tasks.reconcile_pending()
    assert sorted(passes) == sorted(d.pk for d in new)
    tasks.reconcile_pending()
    assert sorted(passes[2:]) == sorted(d.pk for d in background)


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_new_work_is_not_topped_up_with_passes_agents_asked_for(ready_nodes, queued, monkeypatch):
    ready_nodes("h1")
    observed = [create(f"seen{i}", 0) for i in range(3)]
    tasks._queued_marks().delete(tasks._PENDING)
    tasks.request_reconciles([d.pk for d in observed], background=True)
    new = create("new", 1)
    passes = record_passes(monkeypatch)
    tasks.reconcile_pending()
    assert passes == [new.pk]  # room for 19 more, but placing waits for no status pass
    tasks.reconcile_pending()
    assert sorted(passes[1:]) == sorted(d.pk for d in observed)  # then all of them at once


def background_batch_meeting_new_work(monkeypatch, count: int, yield_seconds: float):
    """`count` deployments waiting for background passes, and a new deployment created
    (asking for a pass) during the first of them. Returns (their ids, the new one's
    holder, the passes made)."""
    monkeypatch.setattr(tasks, "BACKGROUND_YIELD_SECONDS", yield_seconds)
    observed = [create(f"seen{i}", 0).pk for i in range(count)]
    tasks._queued_marks().delete(tasks._PENDING)
    tasks.request_reconciles(observed, background=True)
    passes = record_passes(monkeypatch)
    real = tasks._reconcile_deployment
    new = []

    def first_brings_new_work(pk, effects):
        if not new:
            new.append(create("new", 1))
        return real(pk, effects)

    monkeypatch.setattr(tasks, "_reconcile_deployment", first_brings_new_work)
    return observed, new, passes


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_background_passes_makes_way_for_new_work(ready_nodes, queued, monkeypatch):
    # Status passes cost milliseconds each: a batch of 200 held new deployments back for a second.
    ready_nodes("h1")
    observed, new, passes = background_batch_meeting_new_work(monkeypatch, 4, 0.0)  # checks at each
    tasks.reconcile_pending()
    assert len(passes) == 1  # then it handed the rest back
    rest = {int(pk) for pk in tasks._queued_marks().smembers(tasks._BACKGROUND)}
    assert rest == set(observed) - set(passes)
    assert len(queued) >= 1  # the next batch is queued, and it takes the new work first
    tasks.reconcile_pending()
    assert passes[1:] == [new[0].pk]
    assert Replica.objects.filter(deployment=new[0], node__isnull=False).count() == 1
    tasks.reconcile_pending()
    assert sorted(passes[2:]) == sorted(rest)


@pytest.mark.django_db(transaction=True)
def test_background_passes_make_way_only_once_their_batch_has_run_a_while(ready_nodes, queued, monkeypatch):
    ready_nodes("h1")
    observed, new, passes = background_batch_meeting_new_work(monkeypatch, 3, 3600.0)  # never due
    tasks.reconcile_pending()
    assert sorted(passes) == sorted(observed)
    tasks.reconcile_pending()
    assert passes[3:] == [new[0].pk]


@pytest.mark.django_db(transaction=True)
def test_replicas_that_lost_every_race_go_again_at_once(ready_nodes, monkeypatch):
    """Other schedulers won every node this pass picked (injected): the replicas wait with
    that reason, and the pass asks to run again at once rather than at the next resync."""
    ready_nodes("h1", "h2")
    web = create("web", 2)
    monkeypatch.setattr(controller, "claim_nodes", lambda read_versions, **_: set())
    assert controller.reconcile_deployment(web.pk) == controller.RACE_RETRY_SECONDS
    assert set(Replica.objects.values_list("node", "message")) == {
        (None, "placement lost to concurrent schedulers; retrying")
    }
    monkeypatch.undo()
    assert controller.reconcile_deployment(web.pk) is None
    assert Replica.objects.filter(node__isnull=False).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_node_sent_its_set_again_reads_no_template_again(ready_nodes, django_assert_max_num_queries):
    from orchestrator.dispatch import desired_sets

    (h1,) = ready_nodes("h1")
    web = create("web", 3)
    controller.reconcile_deployment(web.pk)
    (first,) = desired_sets([h1.pk])
    # BEGIN, lock, generation, the replicas' keys, COMMIT: their entries come from the cache
    with django_assert_max_num_queries(5) as captured:
        (again,) = desired_sets([h1.pk])
    assert not [q for q in captured.captured_queries if "template" in q["sql"]]
    assert again[1]["replicas"] == first[1]["replicas"]
    assert again[1]["generation"] == first[1]["generation"] + 1
    assert sorted(e["name"] for e in again[1]["replicas"]) == sorted(
        Replica.objects.values_list("name", flat=True)
    )


@pytest.mark.django_db(transaction=True)
def test_a_partial_frame_carries_only_the_entries_its_agent_may_lack(ready_nodes):
    from nodes.models import Node
    from orchestrator.dispatch import desired_sets

    (h1,) = ready_nodes("h1")
    web = create("web", 3)
    controller.reconcile_deployment(web.pk)  # dispatched: a partial frame with all three
    first = set(Replica.objects.values_list("name", flat=True))
    assert all(r.sent_generation is not None for r in Replica.objects.all())
    # The agent has not said it applied that generation: they go again, in full.
    ((_, frame),) = desired_sets([h1.pk], partial=True)
    assert frame["partial"] is True
    assert {e["name"] for e in frame["replicas"]} == first == {n for _, n in frame["names"]}
    # It has now: a scale-up sends the two new entries, and names all five.
    Node.objects.filter(pk=h1.pk).update(observed_generation=frame["generation"])
    services.do_scale_deployment(web, 5, None)
    controller.reconcile_deployment(web.pk)
    ((_, frame),) = desired_sets([h1.pk], partial=True)
    new = set(Replica.objects.values_list("name", flat=True)) - first
    assert len(new) == 2 and {e["name"] for e in frame["replicas"]} == new
    assert {n for _, n in frame["names"]} == first | new
    # One Terminating leaves the names; a full frame (a hello) carries every entry.
    gone = Replica.objects.filter(name__in=first).first()
    Replica.objects.filter(pk=gone.pk).update(phase=Replica.Phase.TERMINATING)
    ((_, frame),) = desired_sets([h1.pk], partial=True)
    assert gone.name not in {n for _, n in frame["names"]} and len(frame["names"]) == 4
    ((_, full),) = desired_sets([h1.pk])
    assert "partial" not in full and {e["name"] for e in full["replicas"]} == (first | new) - {gone.name}


@pytest.mark.django_db(transaction=True)
def test_a_revision_s_template_is_read_once_for_every_node_that_runs_it(ready_nodes, monkeypatch):
    """A revision is the hash of its template: one replica's copy serves all of them."""
    from orchestrator import dispatch

    h1, h2 = ready_nodes("h1", "h2")
    web = create("web", 4)
    controller.reconcile_deployment(web.pk)  # its dispatch filled the process's cache
    monkeypatch.setattr(dispatch, "_templates", dispatch.TemplateCache())
    read = []
    real = dispatch.Replica.objects.filter

    def spy(*args, **kwargs):
        if "pk__in" in kwargs:
            read.append(len(kwargs["pk__in"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(dispatch.Replica.objects, "filter", spy)
    frames = dict(dispatch.desired_sets([h1.pk, h2.pk]))
    assert read == [4]  # once, from the replicas carrying it, for both nodes
    template = Replica.objects.first().template
    entries = frames[h1.pk]["replicas"] + frames[h2.pk]["replicas"]
    assert len(entries) == 4 and all(e["image"] == template["image"] for e in entries)
    # decoded once: every entry holds the same objects (a copy per replica before)
    assert all(e["resources"] is entries[0]["resources"] for e in entries)
    assert all(e["revision"] == web.revision() for e in entries)
    dispatch.desired_sets([h1.pk, h2.pk])
    assert read == [4]  # and not again


@pytest.mark.django_db(transaction=True)
def test_templates_are_found_across_bounded_reads(ready_nodes, monkeypatch):
    """Replicas carrying the revisions are named a chunk at a time; a revision carried only
    by replicas in a later chunk, or whose first carriers are gone, is still found."""
    from orchestrator import dispatch

    ready_nodes("h1")
    old = create("old", 3)
    namespace = Namespace.objects.get(name="default")
    new = services.do_create_deployment(namespace, {"name": "new", "image": "nginx:1", "replicas": 2}, None)
    assert old.revision() != new.revision()
    controller.reconcile_deployment(old.pk)
    controller.reconcile_deployment(new.pk)
    monkeypatch.setattr(dispatch, "READ_CHUNK", 2)
    old_pks = list(Replica.objects.filter(deployment=old).order_by("pk").values_list("pk", flat=True))
    new_pks = list(Replica.objects.filter(deployment=new).values_list("pk", flat=True))
    carriers = {old.revision(): [10**9, *old_pks], new.revision(): new_pks}  # a vanished first
    found = dispatch.TemplateCache().get_many(carriers)
    assert found == {old.revision(): old.template(), new.revision(): new.template()}
    assert dispatch.TemplateCache().get_many({"gone": [10**9]}) == {}


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_could_not_be_queued_leaves_no_mark_behind(ready_nodes, queued, monkeypatch, caplog):
    """The broker refused the task (it is restarting): the next request queues one, rather
    than trusting a mark for a task that never went out."""
    ready_nodes("h1")
    web = create("web", 1)
    queued.clear()
    tasks._queued_marks().delete(tasks._BATCH_QUEUED)

    def refused(token):
        raise kombu.exceptions.OperationalError("Error 111 connecting to the broker")

    monkeypatch.setattr(tasks.reconcile_pending, "delay", refused)
    tasks.request_reconcile(web.pk)
    assert "could not queue a reconcile" in caplog.text
    monkeypatch.setattr(tasks.reconcile_pending, "delay", queued.append)
    tasks.request_reconcile(web.pk)
    assert len(queued) == 1


@pytest.mark.django_db(transaction=True)
def test_a_big_deployment_is_placed_a_burst_per_pass_and_goes_on_at_once(ready_nodes, queued, monkeypatch):
    ready_nodes("h1", "h2")
    monkeypatch.setattr(controller, "BURST_REPLICAS", 3)
    big, small = create("big", 7), create("small", 1)
    tasks.reconcile_pending()
    # three of big's, small's one; big is back in line at once, behind nobody's timer
    assert Replica.objects.filter(deployment=big).count() == 3
    assert Replica.objects.filter(deployment=small, node__isnull=False).count() == 1
    assert {int(pk) for pk in tasks._queued_marks().smembers(tasks._PENDING)} == {big.pk}
    assert len(queued) == 2
    tasks.reconcile_pending()
    tasks.reconcile_pending()
    assert Replica.objects.filter(deployment=big, node__isnull=False).count() == 7
    assert not tasks._queued_marks().scard(tasks._PENDING)  # done: not queued again
    created = Event.objects.filter(name="big", reason="ScaledUp").order_by("first_seen")
    assert sum(int(e.message.split()[1]) * e.count for e in created) == 7


@pytest.mark.django_db(transaction=True)
def test_waiting_replicas_with_nowhere_to_go_are_not_retried_at_once(ready_nodes, queued, monkeypatch):
    monkeypatch.setattr(controller, "BURST_REPLICAS", 2)
    big = create("big", 5)  # no node yet: every pass creates them Pending, two at a time
    for _ in range(3):
        tasks.reconcile_pending()
    assert Replica.objects.filter(deployment=big, node__isnull=True).count() == 5
    queued.clear()
    tasks.request_reconcile(big.pk)
    tasks.reconcile_pending()  # two of five considered, none placed: no pass queued again
    assert not tasks._queued_marks().scard(tasks._PENDING)
    ready_nodes("h1")  # room appears: placed, two per pass
    for _ in range(3):
        tasks.request_reconcile(big.pk)
        tasks.reconcile_pending()
    assert Replica.objects.filter(deployment=big, node__isnull=False).count() == 5


@pytest.mark.django_db(transaction=True)
def test_a_pass_never_loads_a_replica_field_one_row_at_a_time(ready_nodes):
    """A pass reads a subset of the replica's fields; touching another would load it with a
    query per replica (thousands at scale)."""
    import re

    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from nodes.models import Node

    h1, h2 = ready_nodes("h1", "h2")
    web = create("web", 4)
    controller.reconcile_deployment(web.pk)
    now = timezone.now()
    Replica.objects.update(phase=Replica.Phase.RUNNING, ready=True, ready_since=now, started_at=now)
    # Every path: a status pass, an eviction (NoExecute), a lost node's replicas replaced, a scale-down.
    Node.objects.filter(pk=h1.pk).update(taints=[{"key": "k", "value": "", "effect": "NoExecute"}])
    long_ago = now.replace(year=2000)
    Node.objects.filter(pk=h2.pk).update(status=Node.Status.NOT_READY, status_changed_at=long_ago)
    Replica.objects.filter(node=h2).update(phase=Replica.Phase.UNKNOWN)
    web.replicas = 2
    web.save(update_fields=["replicas"])
    one_row = re.compile(r'FROM "orchestrator_replica" WHERE "orchestrator_replica"."id" = ')
    with CaptureQueriesContext(connection) as captured:
        controller.reconcile_deployment(web.pk)
    assert Replica.objects.filter(phase=Replica.Phase.TERMINATING).count() == 4
    assert not [q["sql"] for q in captured if one_row.search(q["sql"])]


@pytest.mark.django_db(transaction=True)
def test_hand_overs_while_a_dispatch_is_queued_join_it(ready_nodes, dispatch_queue, dispatched):
    h1, h2, h3 = ready_nodes("h1", "h2", "h3")
    tasks._hand_to_worker([h1.pk, h2.pk])
    tasks._hand_to_worker([h2.pk, h3.pk])
    assert dispatch_queue == [()]  # one task for both
    tasks.dispatch_desired_sets()
    assert dispatched == [sorted([h1.pk, h2.pk, h3.pk])]  # each node one frame
    assert not tasks._queued_marks().exists(tasks._DISPATCH_QUEUED)
    tasks._hand_to_worker([h1.pk])
    assert dispatch_queue == [(), ()]  # the mark went with the task: the next hand-over queues one


@pytest.mark.django_db(transaction=True)
def test_nodes_whose_dispatch_failed_wait_for_the_retry(ready_nodes, dispatch_queue, monkeypatch):
    h1, h2 = ready_nodes("h1", "h2")
    tasks._hand_to_worker([h1.pk, h2.pk])
    monkeypatch.setattr(tasks, "dispatch_nodes", mock.Mock(side_effect=OperationalError("gone")))
    with pytest.raises(OperationalError):
        tasks.dispatch_desired_sets()
    marks = tasks._queued_marks()
    assert {int(pk) for pk in marks.smembers(tasks._DISPATCH_PENDING)} == {h1.pk, h2.pk}
    assert marks.exists(tasks._DISPATCH_QUEUED)  # the retry is this task: no second one
    tasks._hand_to_worker([h1.pk])
    assert dispatch_queue == [()]


@pytest.mark.django_db(transaction=True)
def test_a_starting_worker_clears_a_lost_dispatch_s_mark(ready_nodes, dispatch_queue):
    (h1,) = ready_nodes("h1")
    marks = tasks._queued_marks()
    marks.set(tasks._DISPATCH_QUEUED, 1, ex=tasks.DISPATCH_MARK_SECONDS)  # its task was lost
    tasks._hand_to_worker([h1.pk])
    assert dispatch_queue == []  # held back by the mark
    tasks.clear_dispatch_mark()
    assert dispatch_queue == [()]


def test_what_a_flush_could_not_send_stays_for_the_next():
    sent = []

    def send(node_ids):
        if not sent:
            sent.append(None)
            raise kombu.exceptions.OperationalError("broker down")
        sent.append(node_ids)

    effects = controller.Effects(send=send)
    effects.nodes.update({2, 1})
    with pytest.raises(kombu.exceptions.OperationalError):
        effects.flush()
    effects.flush()
    assert sent == [None, [1, 2]]
    assert not effects.nodes
