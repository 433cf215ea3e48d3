"""Percentiles and summaries of latency samples; means of figures some runs may lack."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), interpolated between the closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """count, mean and the usual percentiles of `values` (milliseconds in, milliseconds out)."""
    if not values:
        return {"count": 0}
    return {"count": len(values), "mean": round(sum(values) / len(values), 3),
            "p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3),
            "p99": round(percentile(values, 99), 3), "max": round(max(values), 3)}


def downsample(values: Sequence[float], at_most: int = 2000) -> list[float]:
    """Sorted values thinned to at most `at_most` evenly spaced ranks (for the JSON and the CDF)."""
    ordered = sorted(values)
    if len(ordered) <= at_most:
        return [round(v, 3) for v in ordered]
    step = (len(ordered) - 1) / (at_most - 1)
    return [round(ordered[round(i * step)], 3) for i in range(at_most)]


def mean_of_known(values: Sequence[float | None]) -> float | None:
    """The mean of the values that were measured (None: not measured), to 2 decimals; None if none were."""
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 2) if known else None
