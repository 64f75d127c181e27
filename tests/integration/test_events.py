"""Publish/subscribe: a subscriber of its own binds a queue to `offload.events` and, with no
change to the app, receives the domain events of a registration, exactly once each."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pika
import pytest
import requests

from app.jobs import EVENTS_EXCHANGE
from app.topology import connection_parameters
from tests.integration.helpers import register, wait_for

pytestmark = pytest.mark.integration

USER_EVENTS = {"user.registered", "user.email_verified", "user.phone_verified"}


class Subscriber:
    """A queue of the test's own, bound to `offload.events` by `binding`; durable, so it keeps
    what is routed to it while the broker restarts."""

    def __init__(self, amqp_url: str, binding: str) -> None:
        self.amqp_url = amqp_url
        self.queue = f"test.events.{uuid.uuid4().hex[:8]}"
        self.received: list[dict[str, Any]] = []
        with self._channel() as channel:
            # The relay declares the exchange too; declaring it here keeps the test independent
            # of which process connected first.
            channel.exchange_declare(EVENTS_EXCHANGE, exchange_type="topic", durable=True)
            channel.queue_declare(self.queue, durable=True)
            channel.queue_bind(self.queue, EVENTS_EXCHANGE, routing_key=binding)

    @contextmanager
    def _channel(self) -> Iterator[Any]:
        connection = pika.BlockingConnection(connection_parameters(self.amqp_url, name="test"))
        try:
            yield connection.channel()
        finally:
            connection.close()

    def drain(self) -> list[dict[str, Any]]:
        """Take every message waiting now; remember them with their routing key."""
        try:
            with self._channel() as channel:
                while True:
                    method, properties, body = channel.basic_get(self.queue, auto_ack=True)
                    if method is None:
                        break
                    event = json.loads(body)
                    event["_routing_key"] = method.routing_key
                    event["_message_id"] = properties.message_id
                    self.received.append(event)
        except pika.exceptions.AMQPConnectionError:
            pass  # the broker is restarting: look again on the next poll
        return self.received

    def of(self, key: str, value: str) -> list[dict[str, Any]]:
        return [e for e in self.drain() if e.get("data", {}).get(key) == value]

    def delete(self) -> None:
        with self._channel() as channel:
            channel.queue_delete(self.queue)


@pytest.fixture
def subscriber_factory(stack) -> Iterator[Any]:
    made: list[Subscriber] = []

    def make(binding: str) -> Subscriber:
        subscriber = Subscriber(stack.amqp_url, binding)
        made.append(subscriber)
        return subscriber

    yield make
    for subscriber in made:
        subscriber.delete()


def assert_v1_envelope(event: dict[str, Any]) -> None:
    assert event["v"] == 1
    assert re.fullmatch(r"[0-9a-f]{32}", event["id"])
    assert event["_message_id"] == event["id"]
    assert event["_routing_key"] == event["type"]
    assert datetime.fromisoformat(event["occurred_at"]).tzinfo is not None
    assert isinstance(event["data"], dict)


def verify_email_and_phone(stack: Any, user: dict[str, Any]) -> None:
    """Confirm the link from the email (the page's CSRF-protected button) and the SMS code."""
    wait_for(
        lambda: (
            any(r["to"] == user["email"] for r in stack.sinks["smtp"].records())
            and any(r["to"] == user["phone"] for r in stack.sinks["sms"].records())
        ),
        timeout=30,
        what="the email and the SMS",
    )
    email = next(r for r in stack.sinks["smtp"].records() if r["to"] == user["email"])
    link = re.search(r"http://\S+/verify-email/\S+", email["text"])
    assert link is not None
    browser = requests.Session()
    page = browser.get(link.group(0), timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    confirmed = browser.post(link.group(0), data={"csrf_token": token.group(1)}, timeout=10)
    assert confirmed.status_code == 200, confirmed.text
    sms = next(r for r in stack.sinks["sms"].records() if r["to"] == user["phone"])
    code = re.search(r"\b(\d{6})\b", sms["body"])
    assert code is not None
    verified = requests.post(
        f"{stack.base_url}/api/status/{user['status_token']}/verify-phone",
        json={"code": code.group(1)},
        timeout=10,
    )
    assert verified.status_code == 200, verified.text


def test_a_subscriber_receives_every_user_event_of_a_registration_once(stack, subscriber_factory):
    users = subscriber_factory("user.#")
    notifications = subscriber_factory("notification.#")
    body = register(stack.base_url, "queued")
    user = body["user"]
    verify_email_and_phone(stack, user)

    wait_for(
        lambda: {e["type"] for e in users.of("user_id", user["id"])} == USER_EVENTS,
        timeout=30,
        what="user.registered, user.email_verified and user.phone_verified",
    )
    notification_ids = {n["id"] for n in user["notifications"]}
    wait_for(
        lambda: {e["data"]["notification_id"] for e in notifications.drain()} >= notification_ids,
        timeout=30,
        what="notification.sent for the email and the SMS",
    )
    time.sleep(1)  # a duplicate would come right behind (the relay runs every 0.2 s here)
    mine = users.of("user_id", user["id"])
    assert sorted(e["type"] for e in mine) == sorted(USER_EVENTS), "an event came twice"
    for event in mine:
        assert_v1_envelope(event)
        # The least a subscriber needs: no address, number, code or token.
        assert event["data"] == {"user_id": user["id"]}
    sent = [e for e in notifications.drain() if e["data"]["notification_id"] in notification_ids]
    assert len(sent) == 2, "a notification event came twice"
    for event in sent:
        assert_v1_envelope(event)
        assert event["type"] == "notification.sent"
        assert event["data"]["status"] == "sent"
        assert event["data"]["channel"] in {"email", "sms"}
    assert {e["data"]["channel"] for e in sent} == {"email", "sms"}
    # user.# does not see notification events, and notification.# no user events.
    assert not any(e["type"].startswith("notification.") for e in users.drain())
    assert not any(e["type"].startswith("user.") for e in notifications.drain())


def test_an_event_written_while_the_broker_is_down_goes_out_when_it_is_back(
    stack, subscriber_factory
):
    users = subscriber_factory("user.registered")
    assert stack.node is not None
    stack.node.stop()
    try:
        user = register(stack.base_url, "queued")["user"]
    finally:
        stack.node.start()
    wait_for(
        lambda: len(users.of("user_id", user["id"])) >= 1,
        timeout=60,
        what="the user.registered event written while the broker was down",
    )
    time.sleep(1)
    received = users.of("user_id", user["id"])
    assert len(received) == 1
    assert_v1_envelope(received[0])
