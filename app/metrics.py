"""Prometheus metrics for the web process (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REGISTRATIONS = Counter(
    "offload_registrations_total",
    "Registrations by dispatch mode and outcome.",
    ["mode", "outcome"],
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "offload_registration_step_seconds",
    "Time spent in each step of a registration (db, email, sms, publish).",
    ["mode", "step"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PUBLISH_FAILURES = Counter(
    "offload_publish_failures_total",
    "Publishes that failed or timed out; their jobs were left to the outbox relay.",
    registry=REGISTRY,
)
HUB_BLOCKS = Counter(
    "offload_hub_blocks_total",
    "Times gevent's monitor thread found the event loop held longer than HUB_BLOCK_REPORT_MS "
    "by one greenlet (every other request of the process waited meanwhile).",
    registry=REGISTRY,
)
