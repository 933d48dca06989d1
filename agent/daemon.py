"""Wires the agent together: credential, engine runtime, reconciler, reporter, session.

The node name the containers are labelled with is the one in the credential (what the
control plane knows this node as), fixed for the life of the process.
"""

from __future__ import annotations

import asyncio
import logging

from agent.config import AgentConfig
from agent.enroll import Enroller, obtain_credential
from agent.reconciler import Reconciler
from agent.reconnect import ReconnectDelay
from agent.reporter import StatusReporter
from agent.runtime import EngineInfo, Runtime, RuntimeFailure
from agent.runtime.docker import DockerRuntime
from agent.session import Session

log = logging.getLogger(__name__)


async def run_agent(config: AgentConfig) -> None:
    """Run until cancelled. Containers keep running when the agent stops."""
    enroller = Enroller(config)
    credential = await obtain_credential(enroller)
    node = credential.node
    runtime = DockerRuntime(config.docker_host, node)
    try:
        engine = await wait_for_engine(runtime, config.docker_host)
        log.info(
            "engine %s at %s: %d millicores, %d MiB, %d image(s)",
            engine.version,
            config.docker_host,
            engine.cpu_millis,
            engine.memory_bytes >> 20,
            len(engine.images),
        )
        await serve_node(config, enroller, runtime, engine, node)
    finally:
        await runtime.close()


async def serve_node(
    config: AgentConfig,
    enroller: Enroller,
    runtime: Runtime,
    engine: EngineInfo,
    node: str,
    *,
    reporter: StatusReporter | None = None,
) -> None:
    """Converge `runtime` and keep the session with the control plane, until cancelled.

    The part every agent runs, on a real server or as a hollow node (agent/hollow.py) over
    a fake runtime. `reporter.run` is called once per welcomed connection.
    """
    reporter = reporter or StatusReporter()
    reconciler = Reconciler(runtime, node, on_change=reporter.mark_dirty, before_stop=reporter.wait_sent)
    reporter.hold = reconciler.news_due
    session = Session(config, enroller, reconciler, reporter, runtime, engine)
    async with asyncio.TaskGroup() as group:
        group.create_task(reconciler.run(), name="berth-reconciler")
        group.create_task(session.run_forever(), name="berth-session")


async def wait_for_engine(runtime: Runtime, where: str) -> EngineInfo:
    """The engine's info, waiting (and saying so) until the engine answers."""
    delay = ReconnectDelay(base=0.5, cap=10.0)
    while True:
        try:
            return await runtime.engine_info()
        except RuntimeFailure as exc:
            wait = max(delay.next(), 0.5)
            log.warning("waiting for the container engine at %s: %s (retrying in %.1f s)", where, exc, wait)
            await asyncio.sleep(wait)
