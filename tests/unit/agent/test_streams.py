"""Agent streams, pure parts and the stream manager over a scripted runtime."""

from __future__ import annotations

import asyncio
import struct
import threading

import pytest

from agent.logbatch import (
    ChunkedDecoder,
    FrameDecoder,
    LineHandoff,
    LogLine,
    engine_since,
    read_frames,
    split_entries,
)
from agent.runtime import Runtime, RuntimeFailure
from agent.samples import (
    ContainerSample,
    NodeSample,
    container_cpu_percent,
    container_sample_from_stats,
    node_cpu_percent,
    parse_diskstats,
    parse_meminfo,
    parse_net_dev,
    parse_proc_stat,
)
from agent.stream_protocol import (
    ExecOpen,
    ExecResize,
    LogsOpen,
    StreamClose,
    StreamFrameError,
    StreamsRenew,
    parse_stream_frame,
)
from agent.streams import AgentStreams


def frame(stream_type: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream_type, len(payload)) + payload


def test_multiplexed_frames_become_lines_with_their_stream_and_time():
    raw = frame(1, b"2026-11-22T11:00:00.123456789Z hello\n") + frame(2, b"2026-11-22T11:00:01.5Z oops\n")
    buffer = memoryview(raw)
    position = 0

    def read(size):
        nonlocal position
        chunk = bytes(buffer[position : position + min(size, 7)])  # short reads, as sockets do
        position += len(chunk)
        return chunk

    lines = [
        line for stream_type, payload in read_frames(read) for line in split_entries(stream_type, payload)
    ]
    assert lines == [
        LogLine("2026-11-22T11:00:00.123456789Z", "stdout", "hello"),
        LogLine("2026-11-22T11:00:01.500000000Z", "stderr", "oops"),  # always 9 digits: sorts as text
    ]


def test_a_partial_entry_without_newline_and_invalid_utf8_still_arrive():
    lines = list(split_entries(1, b"2026-11-22T11:00:00.000000001Z no newline \xff"))
    assert lines == [LogLine("2026-11-22T11:00:00.000000001Z", "stdout", "no newline \ufffd")]


def test_engine_since_is_exact_to_the_nanosecond():
    assert engine_since("2026-11-22T11:00:00.123456789Z") == "1795345200.123456789"
    assert engine_since("1970-01-01T00:00:01Z") == "1.000000000"
    with pytest.raises(ValueError):
        engine_since("yesterday")


def test_line_handoff_wakes_once_per_batch_and_holds_the_producer_when_full():
    wakes = []
    handoff = LineHandoff(lambda: wakes.append(1), capacity=3)
    line = LogLine("t", "stdout", "x")
    for _ in range(3):
        assert handoff.put(line)
    assert len(wakes) == 1  # only the empty -> non-empty transition wakes the loop
    blocked = threading.Thread(target=handoff.put, args=(line,))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # full: the reader thread waits (and the engine with it)
    assert len(handoff.take(2)) == 2
    blocked.join(2)
    assert not blocked.is_alive() and len(handoff) == 2
    handoff.close()
    assert handoff.put(line) is False  # the viewer is gone: the producer stops


@pytest.mark.parametrize(
    ("kind", "data", "field"),
    [
        ("logs.open", {"stream": "s1", "namespace": "default", "replica": "Web"}, "replica"),
        ("logs.open", {"stream": "s1", "namespace": "default", "replica": "w", "since": "soon"}, "since"),
        ("logs.open", {"stream": "s1", "namespace": "default", "replica": "w", "tail": -1}, "tail"),
        (
            "exec.open",
            {"stream": "s1", "namespace": "d", "replica": "w", "command": [], "cols": 80, "rows": 24},
            "command",
        ),
        ("exec.resize", {"stream": "s1", "cols": 100000, "rows": 24}, "cols"),
        ("exec.resize", {"stream": "s1", "cols": 80, "rows": 0}, "rows"),
        ("stream.close", {"stream": "../../etc"}, "stream"),
        ("streams.renew", {"streams": ["ok"], "lease": 0}, "lease"),
    ],
)
def test_bad_stream_frames_are_refused_naming_the_field(kind, data, field):
    with pytest.raises(StreamFrameError, match=field):
        parse_stream_frame(kind, data)


def test_good_stream_frames_parse():
    opened = parse_stream_frame(
        "logs.open",
        {
            "stream": "s1",
            "namespace": "default",
            "replica": "web-1",
            "since": "2026-11-22T11:00:00.1Z",
            "tail": 5,
        },
    )
    assert opened == LogsOpen("s1", "default", "web-1", "2026-11-22T11:00:00.1Z", 5, True, 30.0)
    assert parse_stream_frame("exec.resize", {"stream": "s1", "cols": 120, "rows": 40}) == ExecResize(
        "s1", 120, 40
    )
    assert parse_stream_frame("streams.renew", {"streams": ["a", "b"], "lease": 5}) == StreamsRenew(
        ("a", "b"), 5.0
    )
    assert parse_stream_frame("stream.close", {"stream": "a"}) == StreamClose("a")
    ex = parse_stream_frame(
        "exec.open",
        {"stream": "e", "namespace": "d", "replica": "w", "command": ["/bin/sh"], "cols": 1, "rows": 1},
    )
    assert isinstance(ex, ExecOpen) and ex.command == ("/bin/sh",)


def test_cpu_percentages_from_two_readings():
    def sample(cpu, system):
        return ContainerSample(cpu, system, 2, 0, 0, 0, 0, 0, 0)

    assert container_cpu_percent(None, sample(0, 0)) is None
    assert container_cpu_percent(sample(0, 0), sample(500, 1000)) == 100.0  # half the host of 2 cores
    assert container_cpu_percent(sample(500, 1000), sample(100, 2000)) is None  # restarted: no rate

    def node(busy, total):
        return NodeSample(busy, total, 0, 0, 0, 0, 0, 0)

    assert node_cpu_percent(node(100, 1000), node(350, 2000)) == 25.0


def test_engine_stats_and_proc_files_parse():
    sample = container_sample_from_stats(
        {
            "cpu_stats": {"cpu_usage": {"total_usage": 7}, "system_cpu_usage": 9, "online_cpus": 4},
            "memory_stats": {"usage": 1000, "limit": 5000, "stats": {"inactive_file": 200}},
            "networks": {"eth0": {"rx_bytes": 10, "tx_bytes": 20}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}},
            "blkio_stats": {
                "io_service_bytes_recursive": [{"op": "read", "value": 4}, {"op": "Write", "value": 6}]
            },
        }
    )
    assert sample == ContainerSample(7, 9, 4, 800, 5000, 11, 22, 4, 6)
    assert parse_proc_stat("cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 1 2 3\n") == (20, 100)
    assert parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\n") == (
        600 * 1024,
        1000 * 1024,
    )
    net = "Inter-|\n face |\n    lo: 99 0 0 0 0 0 0 0 99 0\n  eth0: 10 0 0 0 0 0 0 0 20 0\n"
    assert parse_net_dev(net) == (10, 20)
    disks = (
        "   8 0 sda 1 0 4 0 1 0 8 0 0 0 0\n   8 1 sda1 1 0 4 0 1 0 8 0 0 0 0\n   7 0 loop0 1 0 9 0 1 0 9 0\n"
    )
    assert parse_diskstats(disks) == (4 * 512, 8 * 512)


class ScriptedRuntime(Runtime):
    """Just the stream methods: a log stream that writes `lines` and then keeps following."""

    def __init__(self, lines):
        self.lines = lines
        self.stopped = asyncio.Event()

    async def open_logs(self, container_id, since, tail, follow, handoff):
        def produce():
            for number in range(self.lines):
                handoff.put(LogLine(f"2026-11-22T11:00:00.{number:09d}Z", "stdout", f"line {number}"))
            if not follow:
                handoff.finish()

        threading.Thread(target=produce, daemon=True).start()
        loop = asyncio.get_running_loop()
        return lambda: loop.call_soon_threadsafe(self.stopped.set)

    async def open_exec(self, *args, **kwargs):
        raise RuntimeFailure("no exec here")

    engine_info = list_owned = inspect = create = start = stop = remove = close = None  # type: ignore[assignment]
    container_address = exec_probe = None  # type: ignore[assignment]

    def events(self):
        raise NotImplementedError


def test_lines_arrive_in_batches_and_an_unrenewed_stream_is_stopped():
    async def scenario():
        sent = []
        clock = [0.0]
        runtime = ScriptedRuntime(600)
        streams = AgentStreams(
            runtime, lambda ns, name: "c1" if name == "web-1" else None, _append(sent), clock=lambda: clock[0]
        )
        await streams.handle(LogsOpen("s1", "default", "web-1", None, None, True, 30.0))
        await streams.handle(LogsOpen("s2", "default", "ghost", None, None, True, 30.0))
        while sum(len(f["lines"]) for f in sent if f["type"] == "logs") < 600:
            await asyncio.sleep(0.01)
        clock[0] = 100.0  # nobody renewed the lease
        await asyncio.wait_for(runtime.stopped.wait(), 5)
        left = len(streams)
        await streams.close()
        return sent, left

    sent, left = asyncio.run(scenario())
    ghost = [f for f in sent if f["stream"] == "s2"]
    assert ghost == [
        {
            "type": "stream.end",
            "stream": "s2",
            "error": "replica default/ghost has no container here",
            "exit_code": None,
        }
    ]
    batches = [f["lines"] for f in sent if f["type"] == "logs"]
    assert all(len(b) <= 256 for b in batches) and len(batches) < 600  # batched, not a frame per line
    texts = [line[2] for batch in batches for line in batch]
    assert texts == [f"line {n}" for n in range(600)]  # in order, none lost
    assert left == 0


def test_a_stream_ends_when_the_container_log_ends_and_exec_failures_are_reported():
    async def scenario():
        sent = []
        streams = AgentStreams(ScriptedRuntime(3), lambda ns, name: "c1", _append(sent))
        await streams.handle(LogsOpen("s1", "default", "web-1", None, 10, False, 30.0))
        await streams.handle(ExecOpen("e1", "default", "web-1", ("/bin/sh",), 80, 24, 30.0))
        while len([f for f in sent if f["type"] == "stream.end"]) < 2:
            await asyncio.sleep(0.01)
        await streams.close()
        return sent

    sent = asyncio.run(scenario())
    ends = {f["stream"]: f for f in sent if f["type"] == "stream.end"}
    assert ends["s1"]["error"] is None
    assert ends["e1"]["error"] == "no exec here"


def _append(sent):
    async def send(frame):
        sent.append(frame)

    return send


def test_frames_fed_in_arbitrary_pieces_decode_to_the_same_lines():
    raw = b"".join(frame(1 + n % 2, f"2026-11-22T11:00:00.{n:09d}Z line {n}\n".encode()) for n in range(50))
    expected = [
        LogLine(f"2026-11-22T11:00:00.{n:09d}Z", "stderr" if n % 2 else "stdout", f"line {n}")
        for n in range(50)
    ]
    for size in (1, 7, 100, len(raw)):
        decoder = FrameDecoder()
        lines = [line for i in range(0, len(raw), size) for line in decoder.feed(raw[i : i + size])]
        assert lines == expected, size
    tty = FrameDecoder(tty=True)
    assert tty.feed(b"2026-11-22T11:00:00.1Z a\n2026-11-22T11:00:00.2Z b") == [
        LogLine("2026-11-22T11:00:00.100000000Z", "stdout", "a")
    ]
    assert tty.flush() == [LogLine("2026-11-22T11:00:00.200000000Z", "stdout", "b")]


def test_put_many_waits_for_room_and_keeps_order():
    handoff = LineHandoff(lambda: None, capacity=4)
    lines = [LogLine("t", "stdout", str(n)) for n in range(10)]
    producer = threading.Thread(target=handoff.put_many, args=(lines,))
    producer.start()
    taken = []
    while len(taken) < 10:
        taken += handoff.take(3)
    producer.join(2)
    assert [line.text for line in taken] == [str(n) for n in range(10)]


def test_chunked_bodies_decode_whatever_the_read_sizes():
    body = [b"hello ", b"", b"x" * 300, b"\r\nend"]
    raw = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in body if p) + b"0\r\n\r\n"
    for size in (1, 3, 64, len(raw)):
        decoder = ChunkedDecoder()
        out = b"".join(decoder.feed(raw[i : i + size]) for i in range(0, len(raw), size))
        assert out == b"".join(body) and decoder.done, size
