"""Register through the real web process and see the email and SMS reach the real sinks."""

from __future__ import annotations

import signal
import time

import pika
import pytest
import requests
from sqlalchemy import select

from app.db import make_engine
from app.jobs import work_queue
from app.models import Event
from app.servertiming import parse_server_timing
from tests.integration.helpers import (
    assert_delivered_once,
    deliveries,
    register,
    unique_user,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_queued_registration_reaches_both_sinks_exactly_once(stack):
    user = register(stack.base_url, "queued")["user"]
    assert user["verified"] is False
    assert_delivered_once(stack, [user], timeout=30)
    email = next(r for r in stack.sinks["smtp"].records() if r["to"] == user["email"])
    assert f"{stack.base_url}/verify-email/" in email["text"]
    notifications = requests.get(
        f"{stack.base_url}/api/status/{user['status_token']}", timeout=10
    ).json()
    assert {n["status"] for n in notifications["user"]["notifications"]} == {"sent"}


@pytest.mark.parametrize("mode", ["serial", "parallel"])
def test_inline_modes_have_sent_before_the_answer(stack, mode):
    body = register(stack.base_url, mode)
    user = body["user"]
    assert [n["status"] for n in user["notifications"]] == ["sent", "sent"]
    # The sinks recorded them before the web process answered.
    assert deliveries(stack, "smtp", {user["email"]})[user["email"]] == 1
    assert deliveries(stack, "sms", {user["phone"]})[user["phone"]] == 1


@pytest.mark.parametrize("mode", ["serial", "parallel"])
def test_an_inline_registrations_event_reaches_the_consumers_and_sends_nothing_more(stack, mode):
    """The relay publishes the event for the other subscribers once the inline sends are
    recorded; the email and SMS queues are subscribers too, and their consumers find the rows
    already sent."""
    user = register(stack.base_url, mode)["user"]
    wait_for(
        lambda: registration_event_status(stack, user["id"]) == "published",
        timeout=30,
        what="the relay to publish the registration's event",
    )
    wait_for(
        lambda: all(ready_messages(stack, work_queue(c)) == 0 for c in ("email", "sms")),
        timeout=30,
        what="the consumers to take the event",
    )
    time.sleep(1.0)  # a second send would reach the sinks within the sinks' 50 ms
    # Every record, the resends the sinks recognise (same Message-ID or key) included.
    assert [r["to"] for r in stack.sinks["smtp"].records() if r["to"] == user["email"]] == [
        user["email"]
    ]
    assert [r["to"] for r in stack.sinks["sms"].records() if r["to"] == user["phone"]] == [
        user["phone"]
    ]


def registration_event_status(stack, user_id):
    engine = make_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                select(Event.status).where(
                    Event.type == "user.registered",
                    Event.body["data"]["user_id"].as_string() == user_id,
                )
            ).scalar_one_or_none()
    finally:
        engine.dispose()


def ready_messages(stack, queue):
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def test_server_timing_names_the_steps_of_each_mode(stack):
    expected = {
        "serial": ["db", "email", "sms"],
        "parallel": ["db", "email", "sms"],
        "queued": ["db", "publish"],
    }
    for mode, steps in expected.items():
        response = requests.post(
            f"{stack.base_url}/api/users?mode={mode}", json=unique_user(mode), timeout=30
        )
        assert response.status_code == 201
        assert list(parse_server_timing(response.headers["Server-Timing"])) == steps


def test_sigterm_on_a_consumer_mid_stream_loses_nothing(stack):
    with requests.Session() as http:
        users = [register(stack.base_url, "queued", session=http)["user"] for _ in range(40)]
    emails = {u["email"] for u in users}
    # Let the email consumer get going, then ask it to stop while jobs are still in flight.
    deadline = time.monotonic() + 20
    while not deliveries(stack, "smtp", emails) and time.monotonic() < deadline:
        time.sleep(0.02)
    delivered_before = len(deliveries(stack, "smtp", emails))
    assert 0 < delivered_before < len(users), "the stop should land mid-stream"
    stack.signal("email", signal.SIGTERM)
    exit_code = stack.processes["email"].wait(timeout=30)
    assert exit_code == 0
    stack.stop_process("email")
    stack.start_worker("email")
    assert_delivered_once(stack, users, timeout=60)


@pytest.mark.parametrize("name", ["relay", "sms", "web"])
def test_sigterm_stops_each_process_cleanly(stack, name):
    # stop_process sends SIGTERM and waits: a clean drain exits 0.
    assert stack.stop_process(name) == 0
    if name == "web":
        stack.start_web()
    else:
        stack.start_worker(name)
    user = register(stack.base_url, "queued")["user"]
    assert_delivered_once(stack, [user], timeout=60)
