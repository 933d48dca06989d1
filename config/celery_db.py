"""Database connections in Celery's processes: a task gives its connection back to the
process's pool when it ends, as a Django request does; the pool stays open.

Celery's Django fix-up (celery.fixups.django), with Django's connection pool on and a
prefork worker, closes the whole pool before and after every task. Each task then opened a
new PostgreSQL session (a server process forked, authenticated, its caches cold) and a new
pool with its threads: the scheduler, which runs a batch task every few tens of
milliseconds under load, opened 326 sessions in a 90-second benchmark run and the worker
196 (benchmarks/scheduler_throughput.py, PostgreSQL's log_connections).

Here the tasks' hooks call close_old_connections(), what Django runs at each request's
start and end: with the pool (CONN_MAX_AGE 0) the connection goes back to it, and one
that errors left unusable is dropped; the pool checks a connection before lending it
(CONN_HEALTH_CHECKS), so one PostgreSQL's restart broke is replaced. The rest of the
fix-up is kept: a forked child still starts without its parent's connections or pool,
and tasks run eagerly (inside a caller's request or transaction) are left alone.
"""

from __future__ import annotations

from celery.fixups.django import DjangoFixup, DjangoWorkerFixup
from django.db import close_old_connections


class PooledWorkerFixup(DjangoWorkerFixup):
    def on_task_prerun(self, sender, **kwargs) -> None:
        if not getattr(sender.request, "is_eager", False):
            close_old_connections()

    def on_task_postrun(self, sender, **kwargs) -> None:
        if not getattr(sender.request, "is_eager", False):
            close_old_connections()
            self.close_cache()


class PooledFixup(DjangoFixup):
    @property
    def worker_fixup(self) -> DjangoWorkerFixup:
        if self._worker_fixup is None:
            self._worker_fixup = PooledWorkerFixup(self.app)
        return self._worker_fixup

    @worker_fixup.setter
    def worker_fixup(self, value: DjangoWorkerFixup) -> None:
        self._worker_fixup = value


def fixup(app) -> PooledFixup:
    """In place of celery.fixups.django.fixup (config/celery.py: the app's `fixups`)."""
    return PooledFixup(app).install()
