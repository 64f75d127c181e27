"""Register through the real web process and see the email and SMS reach the real sinks."""

from __future__ import annotations

import signal
import time

import pytest
import requests

from app.servertiming import parse_server_timing
from tests.integration.helpers import assert_delivered_once, deliveries, register, unique_user

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
