"""Percentiles and summaries, in plain Python (no numpy in the load path)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def summarize(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99, mean and max of `values` (NaN when there are none)."""
    if not values:
        return {
            "n": 0,
            "p50": math.nan,
            "p95": math.nan,
            "p99": math.nan,
            "mean": math.nan,
            "max": math.nan,
        }
    ordered = sorted(values)
    # "inclusive": linear interpolation between the closest ranks (numpy's default, and the
    # bench's figures before, equal up to float rounding), so never past the largest value
    # seen; "exclusive" would stretch p99 beyond it on a small sample. Python 3.11 wants two
    # values at least; one value is every percentile of itself.
    cuts = (
        statistics.quantiles(ordered, n=100, method="inclusive")
        if len(ordered) > 1
        else ordered * 99
    )
    return {
        "n": len(ordered),
        "p50": cuts[49],
        "p95": cuts[94],
        "p99": cuts[98],
        "mean": sum(ordered) / len(ordered),
        "max": ordered[-1],
    }


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a figure that could not be measured is written as null."""
    return None if math.isnan(value) or math.isinf(value) else value
