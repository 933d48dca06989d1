"""The Celery application: controllers run here, the periodic loops are scheduled by beat."""

import logging
import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from config import celery_db

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Celery's Django fix-up, but tasks give their database connection back to the pool
# instead of closing the pool (config/celery_db.py).
app = Celery("berth", fixups=[celery_db.fixup])
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["orchestrator", "nodes"])


@app.on_after_finalize.connect
def _schedule_loops(sender, **kwargs):
    from django.conf import settings

    # Level-triggered safety nets: every write already enqueues its own work; these catch
    # what a lost message or a crashed worker missed.
    sender.add_periodic_task(
        settings.NODE_MONITOR_INTERVAL_SECONDS, sender.signature("nodes.monitor_nodes"), name="monitor nodes"
    )
    sender.add_periodic_task(
        settings.RESYNC_INTERVAL_SECONDS, sender.signature("orchestrator.resync"), name="resync"
    )
    sender.add_periodic_task(
        settings.EVENT_PRUNE_INTERVAL_SECONDS,
        sender.signature("orchestrator.prune_events"),
        name="prune events",
    )


@worker_ready.connect
def _resync_on_start(sender, **kwargs):
    # A worker that starts may replace one that was killed holding tasks: with late
    # acknowledgement they stay reserved in Redis until the visibility timeout (an hour),
    # and the "batch queued" mark (orchestrator.tasks.request_reconciles) holds back new
    # batches for a minute. A resync now redoes whatever they were for, and the dispatch
    # mark is cleared (orchestrator.tasks.clear_dispatch_mark).
    try:
        app.send_task("orchestrator.resync")
        from orchestrator.tasks import clear_dispatch_mark

        clear_dispatch_mark()
    except Exception as exc:  # the broker is down: the periodic resync will run once it is back
        logging.getLogger(__name__).warning("no resync at worker start: %s", exc)


@worker_process_init.connect
def _tune_gc(**kwargs):
    from config import gc_tuning

    gc_tuning.tune("worker process")
