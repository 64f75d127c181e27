"""A small soak in the suite: 300 registrations through a broker restart, a consumer SIGKILL
and sinks failing 5% of requests; nothing lost, nothing sent twice."""

import pytest

from bench.soak import format_report, run_soak

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_small_soak_loses_nothing_and_sends_nothing_twice(stack):
    report = run_soak(
        stack, registrations=300, concurrency=20, failure_rate=0.05, drain_timeout=180
    )
    print(format_report(report))
    assert report.accepted == 300 and report.request_errors == 0
    assert len(report.faults) == 2
    assert report.drained
    assert report.lost == 0
    assert report.duplicated == 0
    assert report.parked == 0
