"""A real cluster for benchmarks: private PostgreSQL and Redis, the control plane (uvicorn,
Celery worker and beat) and N network-namespace hosts with their own Docker engines and
agents, started as the e2e tests start them. Needs root.

    with real_cluster(["h1", "h2"], env={"BERTH_NODE_GRACE_SECONDS": "10"}, log=log) as (plane, hosts):
        plane.api.post(...)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.harness.controlplane import ControlPlane
from tests.harness.hosts import Host, HostPool
from tests.harness.plugin import start_services
from tests.harness.waiting import wait_for

# The production defaults of config/settings.py (the test suite shortens them).
PRODUCTION_TIMINGS = {"BERTH_NODE_GRACE_SECONDS": "10", "BERTH_AGENT_HEARTBEAT_SECONDS": "2"}
# The control plane as it runs in production rather than with the test suite's settings: no
# DEBUG (which records every query), its default connection pool. Plain HTTP on the
# benchmark's private address.
PRODUCTION_SETTINGS = {
    "BERTH_DEBUG": "false",
    "BERTH_SSL_REDIRECT": "false",
    "BERTH_ALLOWED_HOSTS": "*",
}


@contextlib.contextmanager
def real_cluster(
    names: list[str], *, env: dict[str, str] | None = None, log: Callable[[str], None] = print
) -> Iterator[tuple[ControlPlane, list[Host]]]:
    log("starting PostgreSQL and Redis")
    services = start_services()
    pool = HostPool(services.session, names)
    plane = ControlPlane(services)
    plane.env.update(env or {})
    try:
        log(f"starting {len(names)} host(s) (network namespace + Docker engine) and the control plane")
        hosts = pool.start()
        plane.start()
        token = plane.new_join_token()
        for host in hosts:
            host.start_agent(plane.agent_url_for(host), token)

        def ready() -> bool:
            return all(
                plane.api.get(f"/api/v1/nodes/{h.name}/").json().get("status") == "Ready" for h in hosts
            )

        wait_for(ready, 60, "every node Ready")
        yield plane, hosts
    finally:
        log("tearing down")
        plane.stop()
        pool.stop()
        services.stop()


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the largest)."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]
