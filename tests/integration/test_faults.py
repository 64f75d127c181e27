"""Nothing lost, nothing sent twice: faults injected for real, deliveries counted at the sinks.

Each test breaks one part of the running stack (the broker, a consumer, the web process, the
sinks), keeps registering, repairs it, and then checks that every registered user got exactly
one email and one SMS. Resends that a receiver recognises as the same message (same Message-ID,
same SMS idempotency key) are recorded by the sinks as duplicates and do not count as a second
delivery; the tests bound how many there may be.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
import requests
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.jobs import EmailJob, encode_job, parked_queue, work_queue
from app.models import User
from app.topology import declare_topology
from tests.integration.helpers import (
    assert_delivered_once,
    deliveries,
    register,
    unique_user,
    wait_for,
    wait_until_confirmed,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RETRY_DELAYS_MS = (200, 400, 800)  # as the stack fixture configures them


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
        # Confirmed, so in the broker's queues (not left to the relay) when it restarts.
        wait_until_confirmed(stack, users)
        stack.node.restart()
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

    # The sinks have everything; the ledger catches up once the last retries have their answer
    # (a hung SMS was recorded by the gateway before its client gave up, and its retry is then
    # answered "duplicate" and marked sent).
    def ledger_of_users() -> list[dict[str, Any]]:
        with requests.Session() as http:
            return [
                http.get(f"{stack.base_url}/api/status/{u['status_token']}", timeout=10).json()[
                    "user"
                ]
                for u in users
            ]

    wait_for(
        lambda: all(n["status"] == "sent" for u in ledger_of_users() for n in u["notifications"]),
        timeout=60,
        what="every notification to be marked sent",
    )
    statuses = ledger_of_users()
    # Some sends needed more than one attempt: the failures were real, and were retried.
    assert max(n["attempts"] for u in statuses for n in u["notifications"]) > 1


@contextlib.contextmanager
def broker_channel(stack: Any) -> Iterator[Any]:
    """A channel to the stack's broker, with the topology declared (as the consumers do)."""
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        channel = connection.channel()
        declare_topology(channel, RETRY_DELAYS_MS)
        yield channel
    finally:
        connection.close()


def parked_messages(stack: Any, channel: str) -> list[tuple[dict[str, Any], bytes]]:
    with broker_channel(stack) as ch:
        found = []
        while True:
            method, properties, body = ch.basic_get(parked_queue(channel), auto_ack=True)
            if method is None:
                return found
            found.append((properties.headers or {}, body))


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
    with broker_channel(stack) as ch:
        return int(ch.queue_declare(queue, passive=True).method.message_count)


def test_parked_jobs_can_be_listed_replayed_and_purged(stack):
    from app.jobs import PARKED_EXCHANGE, SmsJob
    from services.parked import list_parked, purge_parked, replay_parked

    user = register(stack.base_url, "queued")["user"]
    assert_delivered_once(stack, [user], timeout=30)
    sms = next(r for r in stack.sinks["sms"].records() if r["to"] == user["phone"])
    job = encode_job(SmsJob(notification_id=sms["notification_id"], to=user["phone"], body="b"))
    with broker_channel(stack) as ch:
        ch.queue_purge(parked_queue("sms"))
        # Park a copy of the job, as a consumer does after a permanent failure.
        ch.confirm_delivery()
        ch.basic_publish(
            PARKED_EXCHANGE,
            "sms",
            job,
            pika.BasicProperties(
                delivery_mode=2,
                message_id=sms["notification_id"],
                headers={"x-offload-reason": "permanent failure: test"},
            ),
        )
        listed = list_parked(ch, "sms", 10)
        assert [(j.reason, j.notification_id) for j in listed] == [
            ("permanent failure: test", sms["notification_id"])
        ]
        assert queue_depth(stack, parked_queue("sms")) == 1  # listing leaves it parked
        assert replay_parked(ch, "sms", 10) == 1
        assert queue_depth(stack, parked_queue("sms")) == 0
        # The consumer gets the replayed job; its ledger says sent, so it is not sent again.
        wait_for(
            lambda: queue_depth(stack, work_queue("sms")) == 0,
            timeout=10,
            what="the replayed job to be consumed",
        )
        time.sleep(0.5)
        assert deliveries(stack, "sms", {user["phone"]})[user["phone"]] == 1
        ch.basic_publish(PARKED_EXCHANGE, "sms", job, pika.BasicProperties(delivery_mode=2))
        assert purge_parked(ch, "sms") == 1


def test_memory_alarm_blocks_publishers_but_never_hangs_a_request(stack):
    assert stack.node is not None
    alarm = stack.node.ctl("set_vm_memory_high_watermark", "0")
    assert alarm.returncode == 0, alarm.stderr
    try:
        wait_for(
            lambda: "memory" in stack.node.ctl("status").stdout.split("Alarms")[-1][:200],
            timeout=30,
            what="the memory alarm",
        )
        # Each request answers (the requests' own 10 s timeout is the hang detector) and leaves
        # its jobs to the relay, because the blocked broker confirms nothing.
        with requests.Session() as http:
            users = []
            for _ in range(5):
                response = http.post(
                    f"{stack.base_url}/api/users?mode=queued", json=unique_user("alarm"), timeout=10
                )
                assert response.status_code == 201
                users.append(response.json()["user"])
        assert all(n["status"] == "pending" for u in users for n in u["notifications"])
    finally:
        cleared = stack.node.ctl("set_vm_memory_high_watermark", "0.4")
        assert cleared.returncode == 0, cleared.stderr
    assert_delivered_once(stack, users, timeout=90)


def test_consumer_resubscribes_when_the_broker_cancels_it(stack):
    with broker_channel(stack) as ch:
        ch.queue_delete(work_queue("sms"))  # the broker cancels the SMS consumer's subscription
    # The consumer declares the topology again and goes on; the job published meanwhile (if
    # unroutable) is returned to the publisher and left to the relay.
    user = register(stack.base_url, "queued")["user"]
    assert_delivered_once(stack, [user], timeout=60)
