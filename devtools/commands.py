"""The control plane's command lines, shared by `make run`, the test harness and the
benchmarks (docker-compose.yml spells the same ones out for production)."""

from __future__ import annotations

from pathlib import Path


def web(python: str, host: str, port: int, *extra: str) -> list[str]:
    # A bounded graceful stop, as in production (Dockerfile): see README, Failure behaviour.
    return [python, "-m", "uvicorn", "config.asgi:application", "--host", host, "--port", str(port),
            "--timeout-graceful-shutdown", "3", *extra]  # fmt: skip


def worker(python: str, concurrency: int = 2, name: str = "worker") -> list[str]:
    """The controllers' worker: the node monitor, the resync (the `celery` queue)."""
    return [python, "-m", "celery", "-A", "config", "worker", "-l", "info", "-n", f"{name}@%h",
            "--concurrency", str(concurrency), "-Q", "celery"]  # fmt: skip


def scheduler(python: str) -> list[str]:
    """The scheduler: placement passes, one at a time, in one process (config/settings.py,
    SCHEDULING_QUEUE)."""
    return [python, "-m", "celery", "-A", "config", "worker", "-l", "info", "-n", "scheduler@%h",
            "--concurrency", "1", "-Q", "scheduling"]  # fmt: skip


def beat(python: str, schedule: Path) -> list[str]:
    return [python, "-m", "celery", "-A", "config", "beat", "-l", "info", "--schedule", str(schedule)]
