"""Events fold: the same event again within the window counts up its row, in one round trip."""

from datetime import timedelta

from django.utils import timezone

from orchestrator import services
from orchestrator.events import FOLD_WINDOW, record_event
from orchestrator.models import Event, Namespace


def deployment(name="web"):
    return services.do_create_deployment(
        Namespace.objects.get(name="default"), {"name": name, "image": "busybox:1", "replicas": 0}, None
    )


def test_the_same_event_within_the_window_counts_up_one_row(db, django_assert_num_queries):
    web = deployment()
    first = timezone.now()
    record_event(web, "ScaledUp", "created 3 replica(s)", now=first)
    with django_assert_num_queries(1):
        record_event(web, "ScaledUp", "created 3 replica(s)", now=first + timedelta(minutes=5))
    (row,) = Event.objects.filter(reason="ScaledUp")
    assert (row.count, row.first_seen, row.last_seen) == (2, first, first + timedelta(minutes=5))
    assert (row.kind, row.name, row.object_uid, row.namespace_id, row.type) == (
        "Deployment",
        "web",
        web.uid,
        web.namespace_id,
        "Normal",
    )


def test_another_message_object_type_or_a_later_time_is_a_row_of_its_own(db):
    web, api = deployment("web"), deployment("api")
    now = timezone.now()
    record_event(web, "ScaledUp", "created 3 replica(s)", now=now)
    record_event(web, "ScaledUp", "created 4 replica(s)", now=now)  # another message
    record_event(api, "ScaledUp", "created 3 replica(s)", now=now)  # another object
    record_event(web, "ScaledUp", "created 3 replica(s)", warning=True, actor="alice", now=now)  # a warning
    record_event(web, "ScaledUp", "created 3 replica(s)", now=now + FOLD_WINDOW + timedelta(seconds=1))
    rows = Event.objects.filter(reason="ScaledUp").order_by("id")
    assert [(r.name, r.message, r.type, r.actor, r.count) for r in rows] == [
        ("web", "created 3 replica(s)", "Normal", "", 1),
        ("web", "created 4 replica(s)", "Normal", "", 1),
        ("api", "created 3 replica(s)", "Normal", "", 1),
        ("web", "created 3 replica(s)", "Warning", "alice", 1),
        ("web", "created 3 replica(s)", "Normal", "", 1),
    ]
