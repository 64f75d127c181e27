"""Nothing lost, nothing sent twice: faults injected for real, deliveries counted at the sinks.

Each test breaks one part of the running stack (the broker, a consumer, the web process, the
sinks), keeps registering, repairs it, and then checks that every registered user got exactly
one email and one SMS. Resends that a receiver recognises as the same message (same Message-ID,
same SMS idempotency key) are recorded by the sinks as duplicates and do not count as a second
delivery; the tests bound how many there may be.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import pika
import pytest
import requests
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.jobs import EmailJob, encode_job, parked_queue, work_queue
from app.models import User
from tests.integration.helpers import (
    assert_delivered_once,
    deliveries,
    register,
    unique_user,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def register_many(stack: Any, count: int, tag: str) -> list[dict[str, Any]]:
    with requests.Session() as http:
        return [
            register(stack.base_url, "queued", unique_user(tag), session=http)["user"]
            for _ in range(count)
        ]


def recognised_duplicates(stack: Any, kind: str, recipients: set[str]) -> int:
    return sum(
        1 for r in stack.sinks[kind].records() if r["to"] in recipients and r.get("duplicate")
    )


def test_broker_stopped_while_registrations_continue(stack):
    assert stack.node is not None
    stack.node.stop()
    try:
        # The broker is down: every registration still answers 201, its jobs left pending.
        users = register_many(stack, 20, "broker-down")
        assert all(n["status"] == "pending" for u in users for n in u["notifications"])
    finally:
        stack.node.start()
    # The relay publishes the pending jobs; the consumers reconnect and send them.
    assert_delivered_once(stack, users, timeout=90)


def test_broker_restart_keeps_the_jobs_waiting_in_its_queues(stack):
    assert stack.node is not None
    stack.stop_process("email")
    stack.stop_process("sms")
    try:
        users = register_many(stack, 20, "waiting")
        assert all(n["status"] == "queued" for u in users for n in u["notifications"])
        stack.node.stop()
        stack.node.start()
    finally:
        stack.start_worker("email")
        stack.start_worker("sms")
    assert_delivered_once(stack, users, timeout=90)


def test_consumer_killed_with_sigkill_mid_batch(stack):
    users = register_many(stack, 40, "sigkill")
    emails = {u["email"] for u in users}
    wait_for(
        lambda: len(deliveries(stack, "smtp", emails)) >= 3,
        timeout=30,
        what="the email consumer to get going",
    )
    assert len(deliveries(stack, "smtp", emails)) < len(users), "the kill should land mid-batch"
    stack.signal("email", signal.SIGKILL)
    stack.stop_process("email")
    stack.start_worker("email")
    assert_delivered_once(stack, users, timeout=90)
    # Only the sends in flight at the kill can have gone out again (same Message-ID).
    assert recognised_duplicates(stack, "smtp", emails) <= stack.config.consumer_concurrency


def test_web_process_killed_during_load(stack):
    accepted: list[dict[str, Any]] = []
    tag = f"webkill{int(time.time())}"
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as http:
            for _ in range(50):
                if stop.is_set():
                    return
                try:
                    response = http.post(
                        f"{stack.base_url}/api/users?mode=queued", json=unique_user(tag), timeout=10
                    )
                except requests.RequestException:
                    return  # the server died under us: this request's outcome is unknown
                if response.status_code == 201:
                    accepted.append(response.json()["user"])

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    wait_for(lambda: len(accepted) >= 30, timeout=30, what="some registrations")
    stack.signal("web", signal.SIGKILL)
    stop.set()
    for thread in clients:
        thread.join(timeout=30)
    stack.stop_process("web")
    stack.start_web()

    # Every user in the database, including those whose request died with the process
    # (committed, maybe not published), gets exactly one email and one SMS.
    engine = create_engine(stack.database_url)
    with Session(engine) as session:
        stored = session.scalars(select(User).where(User.email.like(f"{tag}-%"))).all()
        users = [{"email": u.email, "phone": u.phone} for u in stored]
    engine.dispose()
    assert {u["email"] for u in accepted} <= {u["email"] for u in users}
    assert_delivered_once(stack, users, timeout=90)


def test_sinks_failing_and_timing_out(stack):
    stack.restart_sink("smtp", failure_rate=0.3)
    stack.restart_sink("sms", failure_rate=0.2, timeout_rate=0.1, hang_seconds=2)
    try:
        users = register_many(stack, 20, "flaky")
        assert_delivered_once(stack, users, timeout=120)
    finally:
        stack.restart_sink("smtp")
        stack.restart_sink("sms")
    with requests.Session() as http:
        statuses = [
            http.get(f"{stack.base_url}/api/users/{u['id']}", timeout=10).json()["user"]
            for u in users
        ]
    assert all(n["status"] == "sent" for u in statuses for n in u["notifications"])
    # Some sends needed more than one attempt: the failures were real, and were retried.
    assert max(n["attempts"] for u in statuses for n in u["notifications"]) > 1


def parked_messages(stack: Any, channel: str) -> list[tuple[dict[str, Any], bytes]]:
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        ch = connection.channel()
        found = []
        while True:
            method, properties, body = ch.basic_get(parked_queue(channel), auto_ack=True)
            if method is None:
                return found
            found.append((properties.headers or {}, body))
    finally:
        connection.close()


def test_malformed_and_unknown_jobs_are_parked_and_the_consumer_goes_on(stack):
    parked_messages(stack, "email")  # start from an empty parking queue
    poison = [
        b"{not json",
        json.dumps({"v": 99, "kind": "email"}).encode(),
        encode_job(
            EmailJob(notification_id="no-such-row", to="x@example.com", subject="s", text="t")
        ),
    ]
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        ch = connection.channel()
        ch.confirm_delivery()
        for body in poison:
            ch.basic_publish("", work_queue("email"), body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()
    wait_for(
        lambda: queue_depth(stack, parked_queue("email")) >= 3, timeout=30, what="three parked jobs"
    )
    reasons = sorted(headers["x-offload-reason"] for headers, _ in parked_messages(stack, "email"))
    assert reasons[0].startswith("malformed job: body is not JSON")
    assert reasons[1].startswith("malformed job: unsupported job version 99")
    assert reasons[2] == "unknown notification no-such-row"
    # The consumer is still there and still sending.
    user = register(stack.base_url, "queued")["user"]
    assert_delivered_once(stack, [user], timeout=30)


def queue_depth(stack: Any, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()
