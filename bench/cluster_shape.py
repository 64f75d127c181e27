"""The benchmark's and the soak's options for `make cluster`'s shape: nginx over TLS in front of
gunicorn (2 gevent workers), PostgreSQL, three RabbitMQ nodes with quorum queues."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

from devstack.cluster import Cluster, ClusterConfig

# The soak's settings, as for the single node (bench.soak.stack_for_soak), plus the cluster's.
SOAK_ENV = {
    "RETRY_DELAYS_MS": "250,500,1000,2000",
    "MAX_ATTEMPTS": "12",
    "SEND_LEASE_SECONDS": "5",
    "RELAY_GRACE_SECONDS": "2",
    "RELAY_INTERVAL": "0.5",
    "WEB_POOL_SIZE": "2000",
    "DATABASE_POOL_SIZE": "60",
    "LOG_LEVEL": "WARNING",
}


def cluster_for_soak(run_dir: Path, consumer_concurrency: int, delay_ms: float) -> Cluster:
    shutil.rmtree(run_dir, ignore_errors=True)
    config = ClusterConfig.on_free_ports(
        run_dir,
        sink_delay_ms=delay_ms,
        rate_limits=False,
        extra_env={
            **SOAK_ENV,
            "CONSUMER_CONCURRENCY": str(consumer_concurrency),
            "CONSUMER_PREFETCH": str(consumer_concurrency * 2),
        },
    )
    return Cluster(config)


def inject_cluster_fault(cluster: Cluster, fault: str) -> str:
    """The soak's two faults on the cluster: SIGKILL the node that leads the email queue (then
    start it again: it rejoins), or SIGKILL the first email consumer (then start it again)."""
    if fault == "broker restart":
        leader = cluster.leader_of("offload.email")
        cluster.kill_node(leader)
        cluster.restart_node(leader)
        return f"leader node SIGKILL ({leader.nodename}, restarted)"
    cluster.processes["email-1"].send_signal(signal.SIGKILL)
    cluster.stop_process("email-1")
    cluster.start_worker("email", 1)
    return "email consumer SIGKILL"
