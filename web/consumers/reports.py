"""Agents' status reports, applied in batches per web process.

A full report is a snapshot of a node, so only the newest one per node matters; a partial
one (only the replicas that changed) is merged into the one still waiting. Reports
wait here while a batch is being applied and then go together in the next batch
(orchestrator.controllers.node_reports.apply_node_reports): when few agents report, each
report is applied at once; when thousands do, hundreds share one transaction instead of
queueing for one each. If PostgreSQL is unavailable, the batch is kept (a newer report of
a node replaces its kept one) and tried again with back-off, while heartbeats flow on.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from channels.db import database_sync_to_async
from django.db import InterfaceError, OperationalError

from orchestrator.controllers.node_reports import apply_node_report, apply_node_reports, merge_reports

log = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError)
RETRY_FIRST, RETRY_MAX = 0.5, 5.0
MAX_BATCH = 500  # nodes per transaction


class ReportBuffer:
    def __init__(self) -> None:
        self._pending: dict[int, dict] = {}
        self._flusher: asyncio.Task | None = None
        self.batches = 0  # applied, for tests and logs

    def submit(self, node_id: int, report: dict) -> None:
        """Queue a node's newest report; it is applied as soon as the current batch is done."""
        waiting = self._pending.get(node_id)
        self._pending[node_id] = report if waiting is None else merge_reports(waiting, report)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="berth-reports")

    def pending(self, node_id: int) -> dict | None:
        return self._pending.get(node_id)

    async def drain(self) -> None:
        """Wait until everything queued so far is applied (or kept after a database error)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        delay = RETRY_FIRST
        while self._pending:
            batch = dict(list(self._pending.items())[:MAX_BATCH])
            for node_id in batch:
                del self._pending[node_id]
            try:
                await database_sync_to_async(_apply, thread_sensitive=False)(batch)
                self.batches += 1
                delay = RETRY_FIRST
            except DATABASE_ERRORS as exc:
                for node_id, report in batch.items():  # kept, under any newer one that came meanwhile
                    newer = self._pending.get(node_id)
                    self._pending[node_id] = report if newer is None else merge_reports(report, newer)
                log.warning("database unavailable (%s); %d node report(s) kept, retrying in %.1f s",
                            str(exc).strip() or type(exc).__name__, len(self._pending), delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)


def _apply(batch: dict[int, dict]) -> None:
    try:
        apply_node_reports(batch)
    except DATABASE_ERRORS:
        raise
    except Exception:
        if len(batch) == 1:
            log.exception("applying the status report of node %s failed; dropped", next(iter(batch)))
            return
        # One bad report must not cost the others: apply them one by one.
        log.exception("applying a batch of %d status reports failed; applying them one by one", len(batch))
        for node_id, report in batch.items():
            try:
                apply_node_report(node_id, report)
            except DATABASE_ERRORS:
                raise
            except Exception:
                log.exception("applying the status report of node %s failed; dropped", node_id)


_buffers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def report_buffer() -> ReportBuffer:
    """The buffer of the running event loop (one per web process; tests may run several loops)."""
    loop = asyncio.get_running_loop()
    buffer = _buffers.get(loop)
    if buffer is None:
        buffer = _buffers[loop] = ReportBuffer()
    return buffer
