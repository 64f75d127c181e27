"""Signed webhooks against a real HTTP receiver, which checks every signature with the
`standardwebhooks` package from PyPI (not with Offload's own signing code)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pika
import pytest
from sqlalchemy import create_engine, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.jobs import parked_queue, retry_queue, webhook_name, work_queue
from app.models import WebhookDelivery
from app.topology import connection_parameters
from devstack import PROJECT_ROOT
from tests.integration.helpers import register, wait_for

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"webhook-test-secret-32-bytes-long").decode()
STACK_RETRY_DELAYS_MS = (200, 400, 800)  # tests/conftest.py's stack


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int
    signature_ok: bool

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


@dataclass
class Receiver:
    """An HTTP endpoint on a free port: answers each POST as `answer(webhook_id, nth)` says."""

    answer: Callable[[str, int], int]
    received: list[Received] = field(default_factory=list)

    def start(self) -> None:
        receiver = self
        verifier = Webhook(SECRET)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    verifier.verify(body, headers)
                    ok = True
                except WebhookVerificationError:
                    ok = False
                webhook_id = headers.get("webhook-id", "")
                nth = sum(1 for r in receiver.received if r.headers.get("webhook-id") == webhook_id)
                status = receiver.answer(webhook_id, nth) if ok else 401
                receiver.received.append(Received(headers, body, status, ok))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{uuid.uuid4().hex[:6]}"

    def for_user(self, user_id: str) -> list[Received]:
        return [
            r
            for r in list(self.received)
            if r.event.get("type") == "user.registered"
            and r.event.get("data", {}).get("user_id") == user_id
        ]


@pytest.fixture
def endpoint(stack) -> Iterator[Callable[[Callable[[str, int], int]], tuple[Receiver, str]]]:
    """Start a receiver and a webhooks worker for it; on the way out, stop both and delete the
    endpoint's queues (other tests' events would pile up in them)."""
    started: list[tuple[Receiver, str, str]] = []

    def make(answer: Callable[[str, int], int]) -> tuple[Receiver, str]:
        receiver = Receiver(answer)
        receiver.start()
        url = receiver.url
        name = webhook_name(url)
        process = f"webhooks-{name}"
        stack.start_worker(
            "webhooks",
            name=process,
            extra_env={"WEBHOOK_URLS": url, "WEBHOOK_SECRET": SECRET},
        )
        started.append((receiver, name, process))
        wait_for(lambda: queue_exists(stack, work_queue(name)), timeout=30, what="its queue")
        return receiver, url

    yield make
    for receiver, name, process in started:
        stack.stop_process(process)
        receiver.server.shutdown()
        connection = pika.BlockingConnection(connection_parameters(stack.amqp_url, name="test"))
        try:
            channel = connection.channel()
            queues = [work_queue(name), parked_queue(name)]
            queues += [retry_queue(name, d) for d in STACK_RETRY_DELAYS_MS]
            for queue in queues:
                channel.queue_delete(queue)
        finally:
            connection.close()


def queue_exists(stack: Any, queue: str) -> bool:
    connection = pika.BlockingConnection(connection_parameters(stack.amqp_url, name="test"))
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if connection.is_open:
            connection.close()


def ledger_row(stack: Any, event_id: str, url: str) -> dict[str, Any] | None:
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            row = (
                connection.execute(
                    select(WebhookDelivery.__table__).where(
                        WebhookDelivery.event_id == event_id,
                        WebhookDelivery.endpoint == webhook_name(url),
                    )
                )
                .mappings()
                .first()
            )
            return dict(row) if row else None
    finally:
        engine.dispose()


def test_each_event_is_posted_signed_and_verifies_with_standardwebhooks(stack, endpoint):
    receiver, url = endpoint(lambda _id, _nth: 200)
    user = register(stack.base_url, "queued")["user"]
    wait_for(lambda: receiver.for_user(user["id"]), timeout=30, what="the webhook")
    time.sleep(1)  # a second POST of the same event would come right behind
    (posted,) = receiver.for_user(user["id"])
    assert posted.signature_ok
    assert posted.answered == 200
    assert posted.headers["webhook-id"] == posted.event["id"]
    assert posted.headers["content-type"] == "application/json"
    assert posted.event["v"] == 1 and posted.event["data"] == {"user_id": user["id"]}
    row = ledger_row(stack, posted.event["id"], url)
    assert row is not None and row["status"] == "delivered" and row["attempts"] == 1


def test_a_failing_endpoint_is_retried_until_it_answers(stack, endpoint):
    # 500 twice, then 200: each event is delivered on its third POST.
    receiver, url = endpoint(lambda _id, nth: 500 if nth < 2 else 200)
    user = register(stack.base_url, "queued")["user"]
    wait_for(
        lambda: any(r.answered == 200 for r in receiver.for_user(user["id"])),
        timeout=60,
        what="the webhook to be delivered after two failures",
    )
    time.sleep(1.5)  # longer than the longest retry delay here: no further POST may follow
    posts = receiver.for_user(user["id"])
    assert [r.answered for r in posts] == [500, 500, 200]
    assert all(r.signature_ok for r in posts)
    assert len({r.headers["webhook-id"] for r in posts}) == 1  # the receiver's idempotency key
    row = ledger_row(stack, posts[0].event["id"], url)
    assert row is not None and row["status"] == "delivered" and row["attempts"] == 3


def test_a_refusing_endpoint_gets_the_event_parked_with_its_reason(stack, endpoint):
    receiver, url = endpoint(lambda _id, _nth: 400)
    user = register(stack.base_url, "queued")["user"]
    wait_for(lambda: receiver.for_user(user["id"]), timeout=30, what="the webhook")
    event_id = receiver.for_user(user["id"])[0].event["id"]
    wait_for(
        lambda: (ledger_row(stack, event_id, url) or {}).get("status") == "failed",
        timeout=30,
        what="the ledger to record the refusal",
    )
    time.sleep(1)
    assert len(receiver.for_user(user["id"])) == 1  # a 400 is permanent: no retry
    row = ledger_row(stack, event_id, url)
    assert row is not None and "400" in row["last_error"] and row["attempts"] == 1
    listing = subprocess.run(
        [sys.executable, "-m", "services.parked", "list", "--channel", webhook_name(url)],
        cwd=PROJECT_ROOT,
        env={**stack.environment(), "WEBHOOK_URLS": url, "WEBHOOK_SECRET": SECRET},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    line = next(line for line in listing.stdout.splitlines() if event_id in line)
    assert "permanent failure" in line and "400" in line and "user.registered" in line
