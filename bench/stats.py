"""Latency statistics: percentiles and summaries (pure functions, unit-tested)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of already sorted values, linearly interpolated
    between the closest ranks (the same definition as numpy's default).

    Raises ValueError on an empty sequence or ``p`` outside 0..100.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * p / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(sorted_values[low])
    fraction = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction)


def summarize(values: Iterable[float], scale: float = 1000.0) -> dict[str, Any]:
    """Count, mean, p50/p95/p99 and max of latencies given in seconds, reported in
    milliseconds by default (``scale``). An empty input gives ``count`` 0 and Nones."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered) * scale, 3),
        "p50": round(percentile(ordered, 50) * scale, 3),
        "p95": round(percentile(ordered, 95) * scale, 3),
        "p99": round(percentile(ordered, 99) * scale, 3),
        "max": round(ordered[-1] * scale, 3),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` rounded, or None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def sustained_rate(scenario: dict[str, Any]) -> float | None:
    """Operations per second with the outbox work they caused done: the operations
    over the measured window plus the time the relay and workers took afterwards to
    empty the outbox (``outbox_after.drain_s``). Equal to ``ops_per_s`` when nothing
    was left; None when the outbox did not empty within the wait, or for runs that did
    not record the drain."""
    drain = (scenario.get("outbox_after") or {}).get("drain_s")
    if drain is None:
        return None
    return round(scenario["operations"] / (scenario["duration_s"] + drain), 1)
