"""Pure parts of the control plane's streams: viewer buffers, log cursors, since, metric series."""

from datetime import UTC, datetime

import pytest

from web.metrics_series import downsample, series
from web.streams import LogCursor, SinceError, ViewerBuffer, parse_since


def lines(*numbers):
    return [["web-1", f"t{n:03d}", "stdout", f"line {n}"] for n in numbers]


def test_a_full_buffer_drops_new_lines_and_leaves_one_marker_where_they_were():
    buffer = ViewerBuffer(3)
    buffer.add(lines(1, 2, 3, 4, 5))
    assert buffer.total_dropped == 2
    assert buffer.drain(2) == lines(1, 2)
    buffer.add(lines(6))  # room again: the marker goes in before the next line
    assert buffer.drain(10) == [*lines(3), [None, None, "dropped", 2], *lines(6)]
    assert not buffer.pending


def test_a_marker_comes_out_even_when_no_line_follows():
    buffer = ViewerBuffer(1)
    buffer.add(lines(1, 2))
    buffer.add_dropped(5)  # lost on the way (the channel layer was full)
    assert buffer.drain(10) == [*lines(1), [None, None, "dropped", 6]]


def test_cursor_resumes_without_duplicates():
    cursor = LogCursor()
    first = cursor.fresh(
        "a",
        [
            ["2026-01-01T00:00:01.000000000Z", "stdout", "x"],
            ["2026-01-01T00:00:02.000000000Z", "stdout", "y"],
        ],
    )
    assert len(first) == 2 and cursor.get("a") == "2026-01-01T00:00:02.000000000Z"
    # A resumed stream starts at the cursor's instant: the line there is a repeat.
    assert cursor.resume("a") == "2026-01-01T00:00:02.000000000Z"
    again = cursor.fresh(
        "a",
        [
            ["2026-01-01T00:00:02.000000000Z", "stdout", "y"],
            ["2026-01-01T00:00:03.000000000Z", "stdout", "z"],
        ],
    )
    assert again == [["2026-01-01T00:00:03.000000000Z", "stdout", "z"]]
    assert cursor.get("b") is None


def test_a_live_line_older_than_the_newest_is_delivered_not_taken_for_a_repeat():
    # The engine's stdout and stderr copiers race to the log file: "n=20" (stdout) can be
    # written after "e=20" (stderr), which was timestamped a few microseconds later.
    cursor = LogCursor()
    assert cursor.resume("a") is None  # a first stream: nothing repeats
    out = cursor.fresh(
        "a",
        [
            ["2026-01-01T00:00:01.000000000Z", "stdout", "n=19"],
            ["2026-01-01T00:00:01.000020000Z", "stderr", "e=20"],
            ["2026-01-01T00:00:01.000010000Z", "stdout", "n=20"],
        ],
    )
    assert [line[2] for line in out] == ["n=19", "e=20", "n=20"]
    assert cursor.get("a") == "2026-01-01T00:00:01.000020000Z"  # the newest, not the last
    # Resumed from the newest: what the engine repeats at that instant is dropped, and what
    # a live stream brings afterwards, in or out of order, is not.
    cursor.resume("a")
    again = cursor.fresh(
        "a",
        [
            ["2026-01-01T00:00:01.000020000Z", "stderr", "e=20"],
            ["2026-01-01T00:00:01.000040000Z", "stderr", "e=25"],
            ["2026-01-01T00:00:01.000030000Z", "stdout", "n=25"],
        ],
    )
    assert [line[2] for line in again] == ["e=25", "n=25"]


def test_cursors_a_client_resumes_with_are_the_floor_of_its_first_stream():
    cursor = LogCursor({"a": "2026-01-01T00:00:05.000000000Z"})
    assert cursor.resume("a") == "2026-01-01T00:00:05.000000000Z"
    out = cursor.fresh(
        "a",
        [
            ["2026-01-01T00:00:05.000000000Z", "stdout", "seen"],
            ["2026-01-01T00:00:06.000000000Z", "stdout", "new"],
        ],
    )
    assert [line[2] for line in out] == ["new"]


def test_since_takes_rfc3339_or_a_duration_ago():
    now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
    assert parse_since("5m", now) == "2026-11-22T11:55:00.000000000Z"
    assert parse_since("2026-11-22T13:00:00.5+01:00") == "2026-11-22T12:00:00.500000000Z"
    assert parse_since("2026-11-22T12:00:00") == "2026-11-22T12:00:00.000000000Z"
    for bad in ("yesterday", "5 minutes", "2026-13-45T00:00:00Z", ""):
        with pytest.raises(SinceError):
            parse_since(bad)


def test_series_turn_counters_into_rates_and_a_reset_into_a_gap():
    samples = [
        {"t": 0, "cpu": None, "mem": 1, "lim": 0, "rx": 100, "tx": 0, "rd": 0, "wr": 0},
        {"t": 5, "cpu": 10, "mem": 2, "lim": 0, "rx": 600, "tx": 50, "rd": 0, "wr": 0},
        {"t": 10, "cpu": 20, "mem": 3, "lim": 0, "rx": 10, "tx": 60, "rd": 0, "wr": 0},
    ]
    points = series(samples)
    assert [p["rx"] for p in points] == [None, 100.0, None]
    assert [p["tx"] for p in points] == [None, 10.0, 2.0]
    assert [p["t"] for p in series(samples, since=5)] == [5, 10]


def test_downsampling_averages_buckets_and_keeps_gaps():
    points = [
        {"t": i, "cpu": float(i), "mem": None, "lim": 0, "rx": None, "tx": None, "rd": None, "wr": None}
        for i in range(10)
    ]
    out = downsample(points, 5)
    assert [p["cpu"] for p in out] == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert [p["t"] for p in out] == [1, 3, 5, 7, 9]
    assert all(p["mem"] is None for p in out)
    assert downsample(points, 20) is points
