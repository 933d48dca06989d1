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


def unserved(served: set[str]) -> dict[str, str]:
    """Berth's tasks routed to a queue no process in `served` consumes, with that queue."""
    app.loader.import_default_modules()
    ours = [name for name in app.tasks if not name.startswith("celery.")]
    assert len(ours) >= 4  # the tasks were found
    return {name: queue_of(name) for name in ours if queue_of(name) not in served}


def test_every_task_has_a_process_that_runs_it():
    served = consumed(commands.worker(sys.executable)) | consumed(commands.scheduler(sys.executable))
    assert unserved(served) == {}


def test_the_scheduler_is_one_process():
    argv = commands.scheduler(sys.executable)
    assert argv[argv.index("--concurrency") + 1] == "1"


def test_docker_compose_runs_a_process_for_every_task_and_one_scheduler():
    import yaml

    from tests.harness.hosts import REPO

    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    celery = {name: s["command"] for name, s in services.items() if s.get("command", [None])[0] == "celery"}
    workers = {name: argv for name, argv in celery.items() if "worker" in argv}
    assert unserved(set().union(*(consumed(argv) for argv in workers.values()))) == {}
    (scheduler,) = [argv for argv in workers.values() if "scheduling" in consumed(argv)]
    assert scheduler[scheduler.index("--concurrency") + 1] == "1"


def test_desired_sets_are_sent_by_the_worker_so_placing_never_waits_for_delivery():
    assert queue_of("orchestrator.dispatch_nodes") in consumed(commands.worker(sys.executable))
    assert queue_of("orchestrator.dispatch_nodes") not in consumed(commands.scheduler(sys.executable))
