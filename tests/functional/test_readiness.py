"""/readyz checks the broker as well as the database: a web process that cannot publish is not
ready in queued mode (a load balancer should send its clients elsewhere)."""

from __future__ import annotations

from dataclasses import replace

import webtest

from app import create_app
from app.messaging import BrokerUnavailable, InMemoryPublisher


def test_ready_when_database_and_broker_answer(testapp):
    response = testapp.get("/readyz")
    assert response.json == {"status": "ready", "database": "up", "broker": "up"}


def test_not_ready_when_the_broker_is_unreachable(settings):
    publisher = InMemoryPublisher(fail_with=BrokerUnavailable("broker unreachable: refused"))
    testapp = webtest.TestApp(create_app(settings, publisher=publisher))
    response = testapp.get("/readyz", status=503)
    assert response.json == {"status": "unavailable", "database": "up", "broker": "down"}


def test_the_broker_is_not_needed_when_requests_do_not_publish(settings):
    publisher = InMemoryPublisher(fail_with=BrokerUnavailable("broker unreachable: refused"))
    app = create_app(replace(settings, dispatch_mode="serial"), publisher=publisher)
    response = webtest.TestApp(app).get("/readyz")
    assert response.json == {"status": "ready", "database": "up", "broker": "unused"}
