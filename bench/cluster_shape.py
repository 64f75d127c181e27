"""The benchmark's and the soak's options for `make cluster`'s shape: nginx over TLS in front of
gunicorn (2 gevent workers), PostgreSQL, three RabbitMQ nodes with quorum queues."""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack.cluster import Cluster, ClusterConfig
from devstack.sinks.process import SinkProcess

# The soak's settings, as for the single node (bench.soak.stack_for_soak), plus the cluster's.
SOAK_ENV = {
    "RETRY_DELAYS_MS": "250,500,1000,2000",
    "MAX_ATTEMPTS": "12",
    "SEND_LEASE_SECONDS": "5",
    # Longer than SMTP_TIMEOUT + SMS_TIMEOUT (the longest inline send), so it starts.
    "SMTP_TIMEOUT": "2",
    "SMS_TIMEOUT": "2",
    "RELAY_GRACE_SECONDS": "5",
    # The backstop for what the broker holds back: at a leader's death, RabbitMQ 3.10 kept
    # jobs a retry queue had to dead-letter (at least once) without ever delivering them; the
    # relay's sweeper republishes rows left queued this long (the ledger stops a second send).
    "RELAY_SWEEP_AFTER_SECONDS": "60",
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


@dataclass
class ClusterBenchConfig:
    """The part of devstack's StackConfig the bench reads."""

    web_port: int
    sink_delay_ms: float
    consumer_concurrency: int
    consumer_prefetch: int
    tcp_nodelay: bool = True  # gunicorn sets TCP_NODELAY itself


class ClusterBenchStack:
    """`make cluster`'s shape seen through what the bench uses of devstack's Stack: the load goes
    to gunicorn itself (plain HTTP on loopback, PostgreSQL behind it), the consumers of a channel
    stop and start together, and every RabbitMQ node counts as the broker's CPU."""

    def __init__(self, cluster: Cluster, consumer_concurrency: int) -> None:
        self.cluster = cluster
        self.config = ClusterBenchConfig(
            web_port=cluster.web_port,
            sink_delay_ms=cluster.config.sink_delay_ms,
            consumer_concurrency=consumer_concurrency,
            consumer_prefetch=2 * consumer_concurrency,
        )
        self.node = None
        self.nodes = cluster.nodes
        self.server = "gunicorn"  # what the bench's session would otherwise switch to

    def __enter__(self) -> ClusterBenchStack:
        self.cluster.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.cluster.stop()

    @property
    def sinks(self) -> dict[str, SinkProcess]:
        return self.cluster.sinks

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        return self.cluster.processes

    @property
    def log_dir(self) -> Path:
        return self.cluster.log_dir

    @property
    def base_url(self) -> str:
        return self.cluster.web_url

    @property
    def amqp_url(self) -> str:
        return self.cluster.amqp_url

    @property
    def database_url(self) -> str:
        return self.cluster.database_url

    def environment(self) -> dict[str, str]:
        """The settings every process of the cluster reads (its rendered environment file)."""
        return dict(self.cluster.env)

    def _instances(self, kind: str) -> list[int]:
        count = self.cluster.config.relays if kind == "relay" else self.cluster.config.consumers
        return list(range(1, count + 1))

    def stop_process(self, name: str) -> None:
        for n in self._instances(name):
            self.cluster.stop_process(f"{name}-{n}")

    def start_worker(self, name: str) -> None:
        for n in self._instances(name):
            self.cluster.start_worker(name, n)


def cluster_bench_stack(
    run_dir: Path, delay_ms: float, consumer_concurrency: int
) -> ClusterBenchStack:
    config = ClusterConfig.on_free_ports(
        run_dir,
        sink_delay_ms=delay_ms,
        rate_limits=False,
        extra_env={
            "BENCH_MODES": "true",
            # The comparison picks each request's mode; production refuses that by default.
            "ALLOW_CLIENT_MODE": "true",
            "CONSUMER_CONCURRENCY": str(consumer_concurrency),
            "CONSUMER_PREFETCH": str(2 * consumer_concurrency),
            "WEB_POOL_SIZE": "1000",
            "DATABASE_POOL_SIZE": "60",
            "LOG_LEVEL": "WARNING",
        },
    )
    return ClusterBenchStack(Cluster(config), consumer_concurrency)
