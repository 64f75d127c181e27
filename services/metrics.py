"""Prometheus metrics for the worker processes (consumers and relay).

Each worker serves its own registry on `METRICS_PORT` when that is set (one port per process:
scrape each worker as its own target).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Counter(
    "offload_jobs_total",
    "Jobs handled by a consumer, by channel and outcome (sent, already_sent, retried, parked).",
    ["channel", "outcome"],
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "offload_job_seconds",
    "Time to handle one job: ledger check, send, and ledger update.",
    ["channel"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RELAYED = Counter(
    "offload_relay_published_total",
    "Pending notifications the outbox relay published.",
    registry=REGISTRY,
)
SWEPT = Counter(
    "offload_relay_swept_total",
    "Notifications left queued past RELAY_SWEEP_AFTER_SECONDS that the relay published again.",
    registry=REGISTRY,
)


def serve_metrics(host: str, port: int) -> None:
    """Serve this process's metrics at http://host:port/ (nothing when port is 0)."""
    if port:
        start_http_server(port, addr=host, registry=REGISTRY)
