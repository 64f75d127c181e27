"""The bench's percentiles: linear interpolation between the closest ranks, as before
`statistics.quantiles` replaced the hand-written one (and as numpy's default)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import summarize


def interpolated(ordered: list[float], q: float) -> float:
    # The definition the bench reported before: rank (n - 1) * q / 100, linear in between.
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@given(st.lists(st.floats(min_value=0, max_value=1e5), min_size=1, max_size=300))
def test_percentiles_mean_what_they_meant(values: list[float]) -> None:
    ordered = sorted(values)
    summary = summarize(values)
    for q in (50, 95, 99):
        assert summary[f"p{q}"] == pytest.approx(interpolated(ordered, q), rel=1e-9, abs=1e-9)
    assert summary["n"] == len(values)
    assert summary["max"] == ordered[-1]


def test_known_figures() -> None:
    summary = summarize([float(v) for v in range(1, 101)])  # 1..100
    assert (summary["p50"], summary["p95"], summary["p99"]) == (50.5, 95.05, 99.01)
    assert summarize([7.0]) | {"n": 1} == {
        "n": 1,
        "p50": 7.0,
        "p95": 7.0,
        "p99": 7.0,
        "mean": 7.0,
        "max": 7.0,
    }
    assert math.isnan(summarize([])["p50"])
