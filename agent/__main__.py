"""`python -m agent`: parse the settings, check them, run the agent until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from agent.config import AgentConfig, ConfigError, load_config
from agent.credential import CredentialFileError, credential_path, load_credential
from agent.daemon import run_agent

log = logging.getLogger("agent")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
        _check_can_authenticate(config)
    except (ConfigError, CredentialFileError) as exc:
        print(f"berth-agent: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # websockets logs handshake headers at DEBUG, and those carry the node credential.
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        asyncio.run(_run(config))
    except KeyboardInterrupt:
        pass
    return 0


def _check_can_authenticate(config: AgentConfig) -> None:
    if load_credential(config.state_dir) is None and not config.join_token:
        raise ConfigError(
            f"this node has not enrolled yet ({credential_path(config.state_dir)} does not exist): "
            "give a join token with --join-token or BERTH_JOIN_TOKEN"
        )


async def _run(config: AgentConfig) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    log.info("berth agent starting: node %s, control plane %s", config.name, config.server)
    try:
        await run_agent(config)
    except asyncio.CancelledError:
        log.info("stopping; containers keep running")


if __name__ == "__main__":
    sys.exit(main())
