"""Live streams on real hosts: logs of a real container (resumed after a blip with no gap
and no duplicate, stderr told apart, REST with tail/since/follow), a web terminal through
the agent into docker exec with a TTY, and metrics of a running container and its node."""

from __future__ import annotations

import json
import re
import time

import requests

from tests.e2e.cluster import create, replicas_of, unique
from tests.e2e.live import Socket
from tests.harness.waiting import wait_for

# Numbered lines, every 5th also on stderr, ~100 lines a second, forever.
COUNTER = [
    "sh",
    "-c",
    "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo \"n=$i\"; "
    'if [ $((i % 5)) = 0 ]; then echo "e=$i" >&2; fi; sleep 0.01; done',
]


def running(api, name, count=1):
    return wait_for(
        lambda: (
            (rs := replicas_of(api, name))
            and len(rs) == count
            and all(r["phase"] == "Running" for r in rs)
            and rs
        ),
        30,
        lambda: f"{count} Running replica(s) of {name}: {replicas_of(api, name)}",
    )


def numbers(entries, stream="stdout", prefix="n="):
    return [int(e[3][len(prefix) :]) for e in entries if e[2] == stream and e[3].startswith(prefix)]


def test_logs_stream_resume_without_gaps_and_rest(cluster, api, control_plane):
    name = unique("logs")
    create(api, name, 1, command=COUNTER)
    replica = running(api, name)[0]["name"]

    def collect(socket, until_n, seen):
        def enough(message):
            if message.get("type") == "lines":
                seen.extend(message["lines"])
            return bool(numbers(seen)) and max(numbers(seen)) >= until_n

        socket.until(enough, 20, f"line n={until_n}")

    first: list = []
    socket = Socket(control_plane, f"/ws/namespaces/default/deployments/{name}/logs/")
    socket.send({"type": "subscribe", "tail": 5}, auth=True)
    started = time.monotonic()
    collect(socket, 1, first)
    print(f"first line {time.monotonic() - started:.2f} s after subscribing")
    collect(socket, max(numbers(first)) + 60, first)
    socket.close()  # a blip: the container keeps writing meanwhile
    cursors = {}
    for entry in first:  # the newest time: stdout and stderr lines may come out of order
        cursors[entry[0]] = max(cursors.get(entry[0], ""), entry[1])

    def written_while_away():
        last = api.get(f"/api/v1/namespaces/default/replicas/{replica}/logs", params={"tail": 1}).text.strip()
        return last.startswith(f"[{replica}] n=") and int(last.rsplit("=", 1)[1]) > max(numbers(first)) + 50

    # The container writes on while nobody watches: the gap the resumed stream must fill.
    wait_for(written_while_away, 15, "50 more lines written while disconnected")

    second: list = []
    socket = Socket(control_plane, f"/ws/namespaces/default/deployments/{name}/logs/")
    socket.send({"type": "subscribe", "tail": 5, "cursors": cursors}, auth=True)
    collect(socket, max(numbers(first)) + 150, second)
    socket.close()
    seen = numbers(first) + numbers(second)
    assert seen == list(range(seen[0], seen[-1] + 1)), "a gap or a duplicate across the reconnect"
    assert len(numbers(first)) <= 5 + 60 + 100  # tail 5 at the start, not the whole history
    errors = numbers(first + second, "stderr", "e=")
    assert errors and all(n % 5 == 0 for n in errors)  # stderr told apart
    assert all(e[0] == replica for e in first + second)

    base = f"/api/v1/namespaces/default/replicas/{replica}/logs"
    tail = api.get(base, params={"tail": 10, "format": "ndjson"})
    assert tail.status_code == 200, tail.text
    records = [r for r in map(json.loads, tail.text.splitlines()) if "text" in r]
    assert len(records) == 10 and {r["stream"] for r in records} <= {"stdout", "stderr"}
    middle = records[5]["time"]
    since = api.get(base, params={"since": middle, "format": "ndjson", "tail": 3})
    times = [r["time"] for r in map(json.loads, since.text.splitlines()) if "text" in r]
    assert times and all(t >= middle for t in times)
    text = api.get(
        f"/api/v1/namespaces/default/deployments/{name}/logs", params={"tail": 3, "timestamps": "true"}
    )
    assert re.match(
        rf"^\d{{4}}-\d\d-\d\dT[\d:.]+Z \[{replica}( stderr)?\] [ne]=\d+$", text.text.splitlines()[0]
    )
    assert api.get(base, params={"since": "next tuesday"}).status_code == 400

    # follow: lines keep coming on one response until the client hangs up.
    last = records[-1]["text"]
    with requests.get(
        control_plane.base_url + base,
        params={"follow": "true", "tail": 0},
        headers={"Authorization": f"Bearer {control_plane.api_token}"},
        stream=True,
        timeout=20,
    ) as response:
        followed = []
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith(f"[{replica}] n="):
                followed.append(int(line.rsplit("=", 1)[1]))
            if len(followed) >= 20:
                break
    assert followed == list(range(followed[0], followed[0] + 20))
    assert followed[0] > int(last.split("=")[1]) - 50


def test_terminal_through_the_agent_and_metrics_of_a_running_replica(cluster, api, control_plane):
    name = unique("term")
    create(api, name, 1)
    replica = running(api, name)[0]
    socket = Socket(
        control_plane, f"/ws/namespaces/default/replicas/{replica['name']}/terminal/", terminal=True
    )
    socket.send({"type": "open", "shell": "sh", "cols": 80, "rows": 24}, auth=True)
    socket.until(lambda m: m["type"] == "started", 15, "the terminal to start")
    output = []

    def shows(text):
        def check(message):
            if message["type"] == "output":
                output.append(message["data"])
            return text in "".join(output)

        return check

    socket.send({"type": "input", "data": "echo $((6*7))\r"})
    socket.until(shows("\n42"), 10, "42 from the shell")
    socket.send({"type": "resize", "cols": 100, "rows": 30})
    socket.send({"type": "input", "data": "stty size\r"})
    socket.until(shows("30 100"), 10, "the new size inside the TTY")
    socket.send({"type": "resize", "cols": 10**6, "rows": 30})
    assert socket.until(lambda m: m["type"] == "error", 5, "an error")["field"] == "cols"
    started = time.monotonic()
    # Ctrl-C typed ahead, while the shell still reads its line in raw mode, is just a byte:
    # press it once the command runs, as a person would.
    socket.send({"type": "input", "data": "echo started-$((2+2)); sleep 60\r"})
    socket.until(shows("started-4"), 10, "the sleep to start")
    socket.send({"type": "input", "data": "\x03"})  # Ctrl-C: the TTY interrupts the sleep
    socket.send({"type": "input", "data": "echo after-$((1+1))\r"})
    socket.until(shows("after-2"), 15, "the shell back after Ctrl-C")
    assert time.monotonic() - started < 30
    socket.send({"type": "input", "data": "exit 3\r"})
    ended = socket.until(lambda m: m["type"] == "exit", 10, "the exit")
    assert ended["code"] == 3
    socket.close()
    sessions = api.get("/api/v1/terminal-sessions/", params={"replica": replica["name"]}).json()["results"]
    assert len(sessions) == 1 and sessions[0]["username"] == "admin" and sessions[0]["exit_code"] == 3
    assert sessions[0]["node"] == replica["node"] and sessions[0]["duration_seconds"] is not None

    def samples():
        node = api.get(f"/api/v1/nodes/{replica['node']}/metrics").json()["series"]["node"]
        mine = api.get(f"/api/v1/namespaces/default/replicas/{replica['name']}/metrics").json()["series"]
        points = mine[replica["name"]]
        ok = (
            len([p for p in node if p["cpu"] is not None]) >= 1
            and len([p for p in points if p["cpu"] is not None]) >= 1
        )
        return (node, points) if ok else None

    node, points = wait_for(samples, 30, "metrics of the node and the replica")
    assert all(p["mem"] > 0 for p in points) and node[-1]["mem"] > 0 and node[-1]["lim"] > 0
    deployment = api.get(f"/api/v1/namespaces/default/deployments/{name}/metrics").json()
    assert set(deployment["series"]) == {replica["name"]}
