"""The Celery application: controllers run here, the periodic loops are scheduled by beat."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("berth")
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
