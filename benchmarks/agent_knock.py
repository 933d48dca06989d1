"""What a refused agent handshake costs a web process: the whole ASGI application answering
HTTP 503 when its joins are full (web/consumers/agent_gate.py), against a bare ASGI app
that only answers 503, measured in the same run (the floor: ASGI messages and the loop).
uvicorn's own parsing of the handshake comes on top of both.

Needs no database or Redis: a refused knock touches neither (the credential index is
empty, so no heartbeat is recorded). Prints one JSON object (CPU µs per knock, the best of
--rounds alternated rounds).

    .venv/bin/python benchmarks/agent_knock.py [--knocks 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DATABASE_URL", "postgres://unused@127.0.0.1:1/unused")  # never reached

HEADERS = [(b"authorization", b"Bearer berth_node_not-a-real-credential")]


async def knock(app) -> list[dict]:
    """One handshake to `app`: what it answered."""
    inbox: asyncio.Queue = asyncio.Queue()
    inbox.put_nowait({"type": "websocket.connect"})
    scope = {
        "type": "websocket", "path": "/ws/agent/", "query_string": b"", "headers": HEADERS,
        "subprotocols": [], "extensions": {"websocket.http.response": {}},
    }  # fmt: skip
    answers: list[dict] = []

    async def send(message):
        answers.append(message)

    await app(scope, inbox.get, send)
    return answers


async def bare(scope, receive, send):
    await receive()
    await send({"type": "websocket.http.response.start", "status": 503, "headers": [(b"retry-after", b"3")]})
    await send({"type": "websocket.http.response.body", "body": b"busy\n"})


async def cpu_per_knock(app, knocks: int) -> float:
    started = time.process_time()
    for _ in range(knocks):
        answers = await knock(app)
    spent = time.process_time() - started
    if answers[0].get("status") != 503:
        raise RuntimeError(f"expected a 503 answer, got {answers[0]}")
    return spent / knocks * 1e6


async def measure(knocks: int, rounds: int) -> dict:
    import django

    django.setup()
    from django.conf import settings

    settings.AGENT_JOINS_IN_FLIGHT = 1
    from config.asgi import application
    from web.consumers import agent_gate

    agent_gate.gate().enter()  # the only slot is taken: every knock is refused
    agent_gate.credentials.replace({})  # read "just now": no reload is started
    best = {"application": float("inf"), "bare": float("inf")}
    for _ in range(rounds):
        best["application"] = min(best["application"], await cpu_per_knock(application, knocks))
        best["bare"] = min(best["bare"], await cpu_per_knock(bare, knocks))
    return {
        "knocks_per_round": knocks,
        "rounds": rounds,
        "refused_knock_cpu_us": round(best["application"], 1),
        "bare_asgi_503_cpu_us": round(best["bare"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--knocks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.knocks, args.rounds))))


if __name__ == "__main__":
    main()
