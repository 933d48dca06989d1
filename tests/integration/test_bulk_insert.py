"""orchestrator.bulk_insert.insert_alike against PostgreSQL: rows that share most values."""

import datetime as dt

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from orchestrator import services
from orchestrator.bulk_insert import insert_alike
from orchestrator.models import Deployment, Namespace, Replica

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment():
    namespace = Namespace.objects.get_or_create(name="default")[0]
    spec = {"name": "bulk", "image": "nginx:1.27", "replicas": 0, "env": {"A": "1"}}
    return services.do_create_deployment(namespace, spec, None)


def replica(deployment, name, node_id=None, **extra):
    template = {**deployment.template(), "note": 'quotes " and \\ survive'}
    return Replica(
        namespace=deployment.namespace,
        deployment=deployment,
        name=name,
        node_id=node_id,
        revision="r1",
        template=template,
        cpu_request=250,
        memory_request=64 * 2**20,
        host_ports=[[8080, "tcp"]],
        **extra,
    )


def test_rows_read_back_as_built_with_their_own_varying_values(deployment, ready_nodes):
    nodes = ready_nodes("bulk-0", "bulk-1", "bulk-2")
    objs = [replica(deployment, f"bulk-{i}", nodes[i % 3].pk) for i in range(7)]
    before = timezone.now()

    inserted = insert_alike(objs, ("uid", "name", "node"))

    assert inserted is objs
    assert all(o.pk is not None and not o._state.adding for o in objs)
    rows = {r.pk: r for r in Replica.objects.filter(deployment=deployment)}
    assert sorted(rows) == sorted(o.pk for o in objs)
    for obj in objs:
        row = rows[obj.pk]
        assert (row.name, row.node_id, row.uid) == (obj.name, obj.node_id, obj.uid)
        assert row.template == obj.template
        assert (row.cpu_request, row.memory_request, row.host_ports) == (250, 64 * 2**20, [[8080, "tcp"]])
        assert row.phase == Replica.Phase.PENDING and row.restart_count == 0 and row.exit_code is None
        assert row.updated_at >= before  # auto_now applied, and shared
    assert len({o.uid for o in objs}) == 7
    assert len({o.updated_at for o in objs}) == 1


def test_a_shared_value_is_the_first_objects(deployment):
    first = replica(deployment, "bulk-a", scheduled_at=timezone.now())
    second = replica(deployment, "bulk-b", scheduled_at=first.scheduled_at - dt.timedelta(days=1))

    insert_alike([first, second], ("uid", "name"))

    assert Replica.objects.get(name="bulk-b").scheduled_at == first.scheduled_at


def test_empty_list_and_unknown_field(deployment):
    assert insert_alike([], ("name",)) == []
    with pytest.raises(ValueError, match=r"has no field\(s\) \['nope'\]"):
        insert_alike([replica(deployment, "bulk-x")], ("name", "nope"))
    assert not Replica.objects.filter(deployment=deployment).exists()


def test_a_clash_fails_the_whole_insert(deployment):
    insert_alike([replica(deployment, "bulk-dup")], ("uid", "name"))

    with pytest.raises(IntegrityError), transaction.atomic():
        insert_alike([replica(deployment, "bulk-new"), replica(deployment, "bulk-dup")], ("uid", "name"))
    assert sorted(Replica.objects.values_list("name", flat=True)) == ["bulk-dup"]


NAME_CONFLICT = ("replica_name_unique_in_namespace", "name")


def test_skipping_conflicts_inserts_the_rest_and_returns_only_those(deployment, ready_nodes):
    node = ready_nodes("bulk-0")[0]
    insert_alike([replica(deployment, "bulk-b")], ("uid", "name"))
    objs = [replica(deployment, name, node.pk) for name in ("bulk-a", "bulk-b", "bulk-c")]

    inserted = insert_alike(objs, ("uid", "name", "node"), skip_conflicts=NAME_CONFLICT)

    assert [o.name for o in inserted] == ["bulk-a", "bulk-c"]
    skipped = objs[1]
    assert skipped.pk is None and skipped._state.adding  # left as it was: unsaved
    rows = dict(Replica.objects.values_list("name", "pk"))
    assert {o.name: o.pk for o in inserted} == {"bulk-a": rows["bulk-a"], "bulk-c": rows["bulk-c"]}
    assert Replica.objects.get(name="bulk-b").node_id is None  # the row already there is untouched


def test_skipping_conflicts_still_fails_on_another_constraint(deployment):
    first = insert_alike([replica(deployment, "bulk-a")], ("uid", "name"))[0]
    clash = replica(deployment, "bulk-new", uid=first.uid)  # the uid is unique too

    with pytest.raises(IntegrityError), transaction.atomic():
        insert_alike([clash], ("uid", "name"), skip_conflicts=NAME_CONFLICT)
    assert sorted(Replica.objects.values_list("name", flat=True)) == ["bulk-a"]


def test_skipping_conflicts_names_a_bad_constraint_or_key(deployment):
    with pytest.raises(ValueError, match="no constraint 'nope'"):
        insert_alike([replica(deployment, "bulk-x")], ("uid", "name"), skip_conflicts=("nope", "name"))
    conditional = ("deployment_name_unique_in_namespace", "name")  # only among live deployments
    with pytest.raises(ValueError, match="'deployment_name_unique_in_namespace' is not a plain unique"):
        insert_alike(
            [Deployment(namespace=deployment.namespace, name="x")], ("name",), skip_conflicts=conditional
        )
    with pytest.raises(ValueError, match="the key 'template' must be one of the varying fields"):
        insert_alike(
            [replica(deployment, "bulk-x")],
            ("uid", "name"),
            skip_conflicts=("replica_name_unique_in_namespace", "template"),
        )


def test_skipping_conflicts_when_every_row_clashes_inserts_none(deployment):
    insert_alike([replica(deployment, "bulk-a"), replica(deployment, "bulk-b")], ("uid", "name"))
    again = [replica(deployment, "bulk-a"), replica(deployment, "bulk-b")]

    assert insert_alike(again, ("uid", "name"), skip_conflicts=NAME_CONFLICT) == []
    assert all(o.pk is None for o in again)
    assert Replica.objects.count() == 2


def test_skipping_conflicts_refuses_keys_that_repeat_among_the_rows(deployment):
    twins = [replica(deployment, "bulk-twin"), replica(deployment, "bulk-twin")]

    with pytest.raises(ValueError, match=r"Replica.name repeats among the rows: \['bulk-twin'\]"):
        insert_alike(twins, ("uid", "name"), skip_conflicts=NAME_CONFLICT)
    assert not Replica.objects.exists()
