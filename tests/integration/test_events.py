"""Events fold: the same event again within the window counts up its row, in one round trip;
events not seen again for the TTL are pruned."""

from datetime import timedelta

from django.conf import settings as django_settings
from django.utils import timezone

from orchestrator import services, tasks
from orchestrator.events import FOLD_WINDOW, prune_events, record_event
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


def test_events_not_seen_for_the_ttl_are_pruned_in_batches(db, settings):
    web = deployment()
    Event.objects.all().delete()  # its Created event, now
    now = timezone.now()
    settings.EVENT_TTL_SECONDS = 3600
    for minutes in range(5):  # 61..65 minutes ago: past the TTL
        record_event(web, "Old", f"old {minutes}", now=now - timedelta(minutes=61 + minutes))
    record_event(web, "Recent", "recent", now=now - timedelta(minutes=59))
    # Folding moves last_seen: an event first seen long ago that keeps happening stays.
    record_event(web, "Ongoing", "again", now=now - timedelta(minutes=90))
    record_event(web, "Ongoing", "again", now=now - timedelta(minutes=30))
    assert prune_events(now=now, batch=2) == 5  # three statements: 2, 2, 1
    assert sorted(Event.objects.values_list("reason", flat=True)) == ["Ongoing", "Recent"]
    assert prune_events(now=now) == 0


def test_the_prune_task_uses_the_configured_ttl(db, settings):
    web = deployment()
    Event.objects.all().delete()  # its Created event, now
    now = timezone.now()
    record_event(web, "Old", "old", now=now - timedelta(seconds=200))
    record_event(web, "Young", "young", now=now - timedelta(seconds=50))
    settings.EVENT_TTL_SECONDS = 100
    tasks.prune_events()
    assert list(Event.objects.values_list("reason", flat=True)) == ["Young"]


def test_beat_prunes_events_periodically():
    from config.celery import app

    app.finalize()
    entry = app.conf.beat_schedule["prune events"]
    assert entry["task"] == "orchestrator.prune_events"
    # A day's TTL / 10, capped at 10 minutes.
    assert entry["schedule"] == django_settings.EVENT_PRUNE_INTERVAL_SECONDS == 600.0
