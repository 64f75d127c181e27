"""Consumers serve Prometheus metrics on METRICS_PORT: what they count is what they did."""

from __future__ import annotations

import re

import pytest
import requests

from devstack.ports import free_port
from tests.integration.helpers import assert_delivered_once, register, wait_for

pytestmark = pytest.mark.integration


def counter(metrics: str, outcome: str) -> float:
    pattern = rf'^offload_jobs_total{{channel="email",outcome="{outcome}"}} (\S+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_email_consumer_counts_what_it_sent(stack):
    port = free_port()
    # This consumer is the only email consumer while the test runs, so it sends every job.
    stack.stop_process("email")
    stack.start_worker("email", name="email-metrics", extra_env={"METRICS_PORT": str(port)})
    try:
        users = [register(stack.base_url, "queued")["user"] for _ in range(5)]
        assert_delivered_once(stack, users, timeout=60)
        url = f"http://127.0.0.1:{port}/"
        wait_for(
            lambda: counter(requests.get(url, timeout=5).text, "sent") == 5,
            timeout=10,
            what="the sent counter to reach 5",
        )
        metrics = requests.get(url, timeout=5).text
        assert counter(metrics, "parked") == 0
        assert re.search(r'^offload_job_seconds_count{channel="email"} 5\.0$', metrics, re.M)
    finally:
        assert stack.stop_process("email-metrics") == 0
        stack.start_worker("email")
