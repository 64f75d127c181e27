"""Domain events are written in the transaction of the change they report (WebTest, SQLite)."""

from __future__ import annotations

import json
import re

from sqlalchemy import select

from app.models import Event

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 7911 123456"}


def events(sessions):
    with sessions() as session:
        return list(session.scalars(select(Event).order_by(Event.created_at)))


def test_registration_and_inline_sends_write_their_events(testapp, sessions, sms_sender):
    body = testapp.post_json("/api/users?mode=serial", ADA, status=201).json
    user = body["user"]
    written = events(sessions)
    assert [e.type for e in written].count("user.registered") == 1
    registered = next(e for e in written if e.type == "user.registered")
    assert registered.status == "pending"  # the relay publishes it, never the request
    assert registered.body["data"] == {"user_id": user["id"]}
    assert registered.body["v"] == 1 and registered.body["id"] == registered.id
    sent = [e for e in written if e.type == "notification.sent"]
    assert {e.body["data"]["notification_id"] for e in sent} == {
        n["id"] for n in user["notifications"]
    }
    assert {e.body["data"]["channel"] for e in sent} == {"email", "sms"}
    # No secret and no contact detail in any event.
    code = re.search(r"code is (\d{6})", sms_sender.sent[-1].body).group(1)
    text = json.dumps([e.body for e in written])
    # The phone in full, in both forms: a four-digit piece of it turns up in a random hex id
    # about once in 250 runs.
    for secret in (code, ADA["email"], "+447911123456", "7911 123456", body["status_token"]):
        assert secret not in text


def test_phone_verification_writes_one_event(testapp, sessions, sms_sender):
    body = testapp.post_json("/api/users?mode=serial", ADA, status=201).json
    code = re.search(r"code is (\d{6})", sms_sender.sent[-1].body).group(1)
    url = f"/api/status/{body['status_token']}/verify-phone"
    testapp.post_json(url, {"code": code}, status=200)
    testapp.post_json(url, {"code": code}, status=409)  # already verified: no second event
    assert [e.type for e in events(sessions)].count("user.phone_verified") == 1


def test_a_refused_registration_writes_no_event(testapp, sessions):
    testapp.post_json("/api/users?mode=queued", ADA, status=201)
    testapp.post_json("/api/users?mode=queued", ADA, status=409)
    assert [e.type for e in events(sessions)] == ["user.registered"]
