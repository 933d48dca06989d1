"""What a web process pays per agent message in the agents' consumer (web/consumers/agent.py).

Starts a private PostgreSQL and Redis, enrolls N nodes, and connects N agents to the real
ASGI application in this process (channels' test communicator, the Redis channel layer),
each saying hello. Then, in rounds:

- heartbeats: every agent sends `--messages` heartbeats; timed until the consumers have
  recorded them all;
- desired pushes: one partial desired frame per node through the channel layer
  (`group_send_many`, as the scheduler's dispatch sends them); timed until every agent
  has received its frame.

It plays the rounds with Berth's consumer and, alternately in the same run, with the same
consumer on channels' stock path: the reference. That is channels' loop
(`AsyncConsumer.__call__`, which waits on both sources with asyncio.wait and a new task
per message) and its generic frame handling (`websocket_receive`, `receive`,
`decode_json`; `send_json`, `encode_json`). The figures are this process's
CPU microseconds per message, the test communicator's own cost included in both.

Prints one JSON object; progress on stderr.

    .venv/bin/python benchmarks/agent_consumer.py [--nodes 200] [--messages 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

HELLO = {
    "type": "hello",
    "agent_version": "bench",
    "engine_version": "27.0",
    "capacity": {"cpu": 4000, "memory": 2**33},
    "labels": {},
    "features": ["desired.partial", "settings"],
}
TIMEOUT = 120.0


def log(message: str) -> None:
    print(f"[agent_consumer] {message}", file=sys.stderr, flush=True)


async def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {TIMEOUT:g} s waiting for {what}")
        await asyncio.sleep(0.001)


async def session(application, credentials: list[str]):
    """Connect every agent, hello, and take its welcome and first desired set."""
    from channels.testing import WebsocketCommunicator

    agents = []
    for credential in credentials:
        ws = WebsocketCommunicator(
            application, "/ws/agent/", headers=[(b"authorization", f"Bearer {credential}".encode())]
        )
        connected, _ = await ws.connect(timeout=30)
        if not connected:
            raise RuntimeError("an agent was refused")
        await ws.send_json_to(HELLO)
        welcome = await ws.receive_json_from(timeout=30)
        assert welcome["type"] == "welcome", welcome
        desired = await ws.receive_json_from(timeout=30)
        assert desired["type"] == "desired", desired
        agents.append(ws)
    return agents


async def heartbeats_round(agents, messages: int, counter: list[int]) -> float:
    """CPU seconds for every agent's `messages` heartbeats to be recorded."""
    frame = {"type": "heartbeat"}
    expected = counter[0] + len(agents) * messages
    started = time.process_time()
    for _ in range(messages):
        for ws in agents:
            await ws.send_json_to(frame)
    await wait_for(lambda: counter[0] >= expected, "the heartbeats")
    return time.process_time() - started


async def pushes_round(agents, node_ids: list[int], generation: int) -> float:
    """CPU seconds for one desired frame per node to go through the channel layer to its agent."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    messages = [
        (f"node.{node_id}", {"type": "desired.push",
                             "frame": {"type": "desired", "generation": generation, "partial": True,
                                       "names": [], "replicas": []}})
        for node_id in node_ids
    ]  # fmt: skip
    started = time.process_time()
    await layer.group_send_many(messages)
    for ws in agents:
        frame = await ws.receive_json_from(timeout=30)
        assert frame["generation"] == generation, frame
    return time.process_time() - started


async def play(args, credentials: list[str], node_ids: list[int]) -> dict:
    from channels.consumer import AsyncConsumer
    from channels.generic.websocket import AsyncJsonWebsocketConsumer

    from config.asgi import application
    from nodes import heartbeats
    from web.consumers.agent import AgentConsumer

    counter = [0]
    recorded = heartbeats.record

    async def counting_record(node_id, timestamp, *, knock=False):  # the same small cost in both variants
        if not knock:  # a knock is the gate's, before the session: not one of the heartbeats timed
            counter[0] += 1
        await recorded(node_id, timestamp, knock=knock)

    heartbeats.record = counting_record
    # What Berth's consumer has of its own, and what channels' stock path has instead.
    swapped = ("__call__", "websocket_receive", "send_json")
    berth = {name: AgentConsumer.__dict__[name] for name in swapped}
    stock = {
        "__call__": AsyncConsumer.__call__,
        "websocket_receive": AsyncJsonWebsocketConsumer.websocket_receive,
        "send_json": AsyncJsonWebsocketConsumer.send_json,
    }
    figures: dict[str, dict[str, list[float]]] = {
        "berth": {"heartbeat": [], "push": []},
        "channels_stock": {"heartbeat": [], "push": []},
    }
    generation = 10**6
    for round_ in range(args.rounds):
        for variant in ("berth", "channels_stock"):
            for name, function in (berth if variant == "berth" else stock).items():
                setattr(AgentConsumer, name, function)
            agents = await session(application, credentials)
            try:
                beat_s = await heartbeats_round(agents, args.messages, counter)
                push_s = 0.0
                for _ in range(args.messages):
                    generation += 1
                    push_s += await pushes_round(agents, node_ids, generation)
            finally:
                for ws in agents:
                    await ws.disconnect()
            per_message = len(agents) * args.messages
            figures[variant]["heartbeat"].append(1e6 * beat_s / per_message)
            figures[variant]["push"].append(1e6 * push_s / per_message)
            log(f"round {round_ + 1}, {variant}: {1e6 * beat_s / per_message:.1f} us a heartbeat, "
                f"{1e6 * push_s / per_message:.1f} us a desired push")  # fmt: skip
    for name, function in berth.items():
        setattr(AgentConsumer, name, function)
    heartbeats.record = recorded
    result = {}
    for variant, kinds in figures.items():
        for kind, values in kinds.items():
            result[f"{variant}_cpu_us_per_{kind}"] = round(statistics.median(values), 1)
    result["heartbeat_ratio"] = round(
        result["channels_stock_cpu_us_per_heartbeat"] / result["berth_cpu_us_per_heartbeat"], 2
    )
    result["push_ratio"] = round(
        result["channels_stock_cpu_us_per_push"] / result["berth_cpu_us_per_push"], 2
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--messages", type=int, default=100, help="heartbeats and pushes per agent per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each variant, alternated")
    args = parser.parse_args()

    from tests.harness.plugin import start_services

    services = start_services()
    try:
        import django

        django.setup()
        import logging

        logging.disable(logging.INFO)  # a line per connection and disconnection otherwise
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        from nodes.services import do_create_join_token, do_enroll_node

        log(f"enrolling {args.nodes} nodes")
        _, join = do_create_join_token(None)
        enrolled = [do_enroll_node(join, f"bench-{i:05d}", {}) for i in range(args.nodes)]
        credentials = [credential for _, credential in enrolled]
        node_ids = [node.pk for node, _ in enrolled]
        result = {"nodes": args.nodes, "messages_per_agent": args.messages, "rounds": args.rounds}
        result.update(asyncio.run(play(args, credentials, node_ids)))
    finally:
        services.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
