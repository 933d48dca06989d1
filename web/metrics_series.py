"""Metrics samples (raw counters, oldest first) into chart series. Pure.

A point is {t, cpu, mem, lim, rx, tx, rd, wr}: cpu in percent, mem/lim in bytes, the rest
in bytes per second over the interval before the point. A counter that went backwards
(a restarted container) gives no rate for that point rather than a negative one.
"""

from __future__ import annotations

RATES = (("rx", "rx"), ("tx", "tx"), ("rd", "rd"), ("wr", "wr"))
FIELDS = ("cpu", "mem", "lim", "rx", "tx", "rd", "wr")


def series(samples: list[dict], *, since: float | None = None, max_points: int | None = None) -> list[dict]:
    points = []
    previous = None
    for sample in samples:
        point = {
            "t": sample["t"],
            "cpu": sample.get("cpu"),
            "mem": sample.get("mem"),
            "lim": sample.get("lim"),
        }
        elapsed = sample["t"] - previous["t"] if previous else 0
        for out, counter in RATES:
            if previous is None or elapsed <= 0 or sample.get(counter, 0) < previous.get(counter, 0):
                point[out] = None
            else:
                point[out] = round((sample.get(counter, 0) - previous.get(counter, 0)) / elapsed, 1)
        previous = sample
        if since is None or sample["t"] >= since:
            points.append(point)
    if max_points is not None and len(points) > max_points:
        points = downsample(points, max_points)
    return points


def downsample(points: list[dict], max_points: int) -> list[dict]:
    """At most `max_points` points: consecutive points averaged in equal buckets (gaps stay gaps)."""
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    if len(points) <= max_points:
        return points
    out = []
    size = len(points) / max_points
    for i in range(max_points):
        bucket = points[int(i * size) : int((i + 1) * size)] or [points[int(i * size)]]
        merged = {"t": bucket[-1]["t"]}
        for field in FIELDS:
            values = [p[field] for p in bucket if p.get(field) is not None]
            merged[field] = round(sum(values) / len(values), 2) if values else None
        out.append(merged)
    return out
