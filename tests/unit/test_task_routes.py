"""Which process runs which task: placement passes in the scheduler, alone; everything else
in the ordinary worker, never behind a burst of placement (config/settings.py)."""

import sys

import pytest

from config.celery import app
from devtools import commands


def queue_of(task: str) -> str:
    return app.amqp.router.route({}, task)["queue"].name


def consumed(argv: list[str]) -> set[str]:
    return set(argv[argv.index("-Q") + 1].split(","))


@pytest.mark.parametrize("task", ["orchestrator.reconcile_pending", "orchestrator.reconcile_deployment"])
def test_placement_passes_run_in_the_scheduler(task):
    assert queue_of(task) in consumed(commands.scheduler(sys.executable))
    assert queue_of(task) not in consumed(commands.worker(sys.executable))


@pytest.mark.parametrize("task", ["nodes.monitor_nodes", "orchestrator.resync"])
def test_the_node_monitor_and_the_resync_never_wait_behind_placement(task):
    assert queue_of(task) in consumed(commands.worker(sys.executable))
    assert queue_of(task) not in consumed(commands.scheduler(sys.executable))


def test_every_task_has_a_process_that_runs_it():
    app.loader.import_default_modules()
    served = consumed(commands.worker(sys.executable)) | consumed(commands.scheduler(sys.executable))
    ours = [name for name in app.tasks if not name.startswith("celery.")]
    assert len(ours) >= 4
    assert {name: queue_of(name) for name in ours if queue_of(name) not in served} == {}


def test_the_scheduler_is_one_process():
    argv = commands.scheduler(sys.executable)
    assert argv[argv.index("--concurrency") + 1] == "1"
