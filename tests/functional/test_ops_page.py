"""/ops: off by default, behind OPS_TOKEN when on; shows the outbox's pending, queued and failed
notifications even when the broker does not answer (its depths come from a live broker in
tests/integration/test_cluster.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import webtest

from app import create_app
from devstack.ports import free_port
from tests.integration.helpers import unique_user

TOKEN = "an-operator-token-for-tests"


@pytest.fixture
def ops_app(settings, publisher, email_sender, sms_sender):
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"  # nothing listens there
    app = create_app(
        replace(settings, ops_token=TOKEN, amqp_url=nowhere),
        publisher=publisher,
        email_sender=email_sender,
        sms_sender=sms_sender,
    )
    return webtest.TestApp(app)


def test_off_by_default(testapp):
    testapp.get("/ops", status=404)
    testapp.get(f"/ops?token={TOKEN}", status=404)


def test_refused_without_the_token(ops_app):
    ops_app.get("/ops", status=403)
    ops_app.get("/ops?token=wrong", status=403)
    ops_app.get("/ops", headers={"Authorization": "Bearer wrong"}, status=403)


def test_counts_notifications_and_says_when_the_broker_is_down(ops_app):
    ops_app.post_json("/api/users?mode=queued", unique_user("ops"), status=201)
    page = ops_app.get("/ops", headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.html.select_one('[data-count="email queued"]').text == "1"
    assert page.html.select_one('[data-count="sms queued"]').text == "1"
    assert page.html.select_one('[data-count="email failed"]').text == "0"
    assert "did not answer" in page.html.select_one("#broker-error").text
