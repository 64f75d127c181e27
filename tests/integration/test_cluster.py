"""Faults on the production shape (`make cluster`'s harness): nginx over TLS, gunicorn with two
gevent workers, PostgreSQL, three RabbitMQ nodes with quorum queues, two consumers per channel,
two relays, all real processes started from deploy/'s files.

Each fault runs during registrations through nginx, and each test counts, at the sinks, exactly
one email and one SMS for every registration that was accepted (201). The cluster is the
session's (tests/conftest.py), shared with the browser test through its nginx.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from devstack.cluster import Cluster
from tests.integration.helpers import assert_delivered_once, unique_user, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# 1,000 registrations for the leader kill, as the issue asks; the other faults use fewer, since
# what they show (a reconnect, a restart) happens in the first seconds of the load.
LEADER_KILL_REGISTRATIONS = 1000
REGISTRATIONS = 300
CLIENTS = 16
DRAIN_SECONDS = 120


@pytest.fixture(autouse=True)
def every_node_back(cluster: Cluster) -> Iterator[None]:
    """Each test starts and ends with all three nodes up (a failed test leaves none down)."""
    yield
    for node in cluster.nodes:
        if not cluster.node_alive(node):
            cluster.restart_node(node)


class Load:
    """Registrations through nginx by CLIENTS threads; `fault` runs once, `at` of the way in."""

    def __init__(self, cluster: Cluster, count: int) -> None:
        self.cluster = cluster
        self.count = count
        self.users = [unique_user("cluster") for _ in range(count)]
        self.accepted: list[dict[str, str]] = []
        self.statuses: Counter[int | str] = Counter()
        self.refusals: list[requests.Response] = []
        self._lock = threading.Lock()
        self._next = itertools.count()

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    def _client(self) -> None:
        with requests.Session() as http:
            while (i := next(self._next)) < self.count:
                try:
                    # Per request: a session's `verify` loses to REQUESTS_CA_BUNDLE.
                    response = http.post(
                        f"{self.cluster.base_url}/api/users?mode=queued",
                        json=self.users[i],
                        timeout=30,
                        verify=str(self.cluster.cert_path),
                    )
                    status: int | str = response.status_code
                except requests.RequestException as exc:
                    status, response = type(exc).__name__, None  # type: ignore[assignment]
                with self._lock:
                    self.statuses[status] += 1
                    if status == 201:
                        self.accepted.append(self.users[i])
                    elif response is not None:
                        self.refusals.append(response)

    def run(self, fault: Callable[[], None], *, at: float = 0.3) -> None:
        clients = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for thread in clients:
            thread.start()
        while self.done < self.count * at and any(t.is_alive() for t in clients):
            time.sleep(0.02)
        fault()
        for thread in clients:
            thread.join(timeout=300)
        assert self.done == self.count


def test_sigkill_of_the_quorum_queues_leader_during_registrations(cluster):
    load = Load(cluster, LEADER_KILL_REGISTRATIONS)
    killed: list[str] = []

    def kill_leader() -> None:
        leader = cluster.leader_of("offload.email")
        killed.append(leader.nodename)
        cluster.kill_node(leader)

    load.run(kill_leader)
    assert killed
    # A new leader was elected among the two nodes left.
    assert cluster.leader_of("offload.email").nodename != killed[0]
    # Nothing the web accepted is lost; refusals are the honest ones (no 500 among them).
    assert 500 not in load.statuses, load.statuses
    assert len(load.accepted) >= LEADER_KILL_REGISTRATIONS * 0.9, load.statuses
    assert_delivered_once(cluster, load.accepted, timeout=DRAIN_SECONDS)


def test_a_stopped_node_then_restarted(cluster):
    load = Load(cluster, REGISTRATIONS)
    node = cluster.nodes[1]
    load.run(node.stop)
    assert 500 not in load.statuses, load.statuses
    cluster.restart_node(node)
    assert node.nodename in node.ctl("cluster_status").stdout
    # The restarted node is a member of the quorum queues again.
    members = cluster.nodes[0].ctl("list_queues", "name", "members", "--no-table-headers", "-q")
    assert node.nodename in members.stdout
    after = Load(cluster, 50)
    after.run(lambda: None)
    assert_delivered_once(cluster, load.accepted + after.accepted, timeout=DRAIN_SECONDS)


def test_a_consumer_whose_node_stops_moves_to_another_and_carries_on(cluster):
    node = cluster.consumer_node("email-2")
    assert node is not None
    load = Load(cluster, REGISTRATIONS)
    load.run(node.stop)
    wait_for(
        lambda: cluster.consumer_node("email-2") not in (None, node),
        timeout=30,
        what="email-2 to consume from another node",
    )
    assert cluster.processes["email-2"].poll() is None
    assert_delivered_once(cluster, load.accepted, timeout=DRAIN_SECONDS)
    # It carries on: with its first node still down, new jobs still reach the sinks.
    after = Load(cluster, 40)
    after.run(lambda: None)
    assert_delivered_once(cluster, after.accepted, timeout=DRAIN_SECONDS)


def server_errors(cluster: Cluster) -> str:
    """The requests that failed with an exception in the web's log (the pool's own reports of
    closing dead connections left out): for the output of a failed test."""
    lines = (cluster.log_dir / "web.log").read_text(errors="replace").splitlines()
    failed = [line for line in lines if '"message": "Exception on ' in line]
    return "\n".join(f"{line[:600]} ... {line[-1500:]}" for line in failed[-3:])


def proxy_errors(cluster: Cluster) -> str:
    """nginx's last upstream errors: why it answered 502 (gunicorn logs no exception when a
    connection reset escapes the app, or when it closes an idle keep-alive connection)."""
    path = cluster.log_dir / "nginx-error.log"
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join([line for line in lines if "upstream" in line][-5:])


def test_postgresql_restart_during_registrations_is_503_with_retry_after(cluster):
    load = Load(cluster, REGISTRATIONS)
    assert cluster.postgres is not None
    load.run(cluster.postgres.restart)
    if 500 in load.statuses:
        print(server_errors(cluster))  # pytest shows it with the failure
    assert 500 not in load.statuses, load.statuses
    unexpected = {s for s in load.statuses if s not in (201, 503)}
    if 502 in unexpected:
        print(proxy_errors(cluster))
    assert not unexpected, load.statuses
    for response in load.refusals:
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
    assert len(load.accepted) > 0
    assert_delivered_once(cluster, load.accepted, timeout=DRAIN_SECONDS)
    # Afterwards it serves again.
    cluster.wait_until_ready(f"{cluster.web_url}/readyz", cluster.processes["web"], "gunicorn")


def test_sigkill_of_one_gunicorn_worker(cluster):
    before = cluster.gunicorn_workers()
    assert len(before) == 2
    load = Load(cluster, REGISTRATIONS)
    load.run(lambda: _kill(before[0]))
    # gunicorn's master replaces the worker; the other served on.
    wait_for(
        lambda: (
            len(cluster.gunicorn_workers()) == 2 and before[0] not in cluster.gunicorn_workers()
        ),
        timeout=30,
        what="gunicorn to replace its worker",
    )
    assert 500 not in load.statuses, load.statuses
    assert len(load.accepted) >= REGISTRATIONS * 0.8, load.statuses
    assert_delivered_once(cluster, load.accepted, timeout=DRAIN_SECONDS)


def _kill(pid: int) -> None:
    import os

    os.kill(pid, signal.SIGKILL)


def test_readyz_checks_the_broker_and_metrics_span_the_workers(cluster: Any):
    ready = requests.get(f"{cluster.web_url}/readyz", timeout=5).json()
    assert ready == {"status": "ready", "database": "up", "broker": "up"}
    # prometheus-client's multiprocess mode: /metrics sums every worker's registrations.
    text = requests.get(f"{cluster.web_url}/metrics", timeout=5).text
    assert "offload_registrations_total" in text
    # Each RabbitMQ node serves its own metrics (rabbitmq_prometheus); per queue, each node
    # reports the queues it leads, so together they cover every queue.
    scraped = "".join(requests.get(url, timeout=10).text for url in cluster.scrape_urls())
    for queue in ("offload.email", "offload.sms"):
        assert f'rabbitmq_queue_messages_ready{{vhost="/",queue="{queue}"}}' in scraped
        assert f'rabbitmq_queue_consumers{{vhost="/",queue="{queue}"}}' in scraped


def test_ops_page_shows_live_depths_and_replays_parked_jobs(cluster):
    import re
    import uuid

    import pika

    from app.jobs import PARKED_EXCHANGE, EmailJob, encode_job, parked_queue
    from app.topology import cluster_parameters
    from tests.conftest import CLUSTER_OPS_TOKEN

    cert = str(cluster.cert_path)
    assert requests.get(f"{cluster.base_url}/ops", verify=cert, timeout=10).status_code == 403
    job_id = uuid.uuid4().hex
    connection = pika.BlockingConnection(cluster_parameters(cluster.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(
        PARKED_EXCHANGE,
        "email",
        encode_job(EmailJob(notification_id=job_id, to="p@example.com", subject="s", text="t")),
        pika.BasicProperties(
            delivery_mode=2, message_id=job_id, headers={"x-offload-reason": "parked by a test"}
        ),
    )
    parked_before = channel.queue_declare(parked_queue("email"), passive=True).method.message_count
    url = f"{cluster.base_url}/ops?token={CLUSTER_OPS_TOKEN}"
    with requests.Session() as http:
        page = http.get(url, verify=cert, timeout=10)
        assert page.status_code == 200
        assert f'data-depth="offload.email.parked">{parked_before}<' in page.text
        assert "offload.sms.retry.200" in page.text
        assert job_id in page.text and "parked by a test" in page.text
        assert 'data-count="email pending"' in page.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        replayed = http.post(
            f"{cluster.base_url}/ops/replay",
            data={"csrf_token": csrf, "token": CLUSTER_OPS_TOKEN, "channel": "email"},
            headers={"Referer": url},
            verify=cert,
            timeout=10,
        )
        assert replayed.status_code == 200, replayed.text[:500]
        assert f"Replayed {parked_before} parked email job" in replayed.text
    # Back on the work queue, the consumer finds no such notification and parks it again,
    # saying why.
    wait_for(
        lambda: (
            job_id in requests.get(url, verify=cert, timeout=10).text
            and "unknown notification" in requests.get(url, verify=cert, timeout=10).text
        ),
        timeout=30,
        what="the replayed job to be consumed and parked again",
    )
    connection.close()
