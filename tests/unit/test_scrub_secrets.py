"""Item 9 of issue 10: codes and link tokens leave the database once sent, and the parked-jobs
listing never shows them."""

from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from app.db import compact_json
from app.jobs import (
    SCRUBBED_TEXT,
    EmailJob,
    SmsJob,
    encode_job,
    job_from_dict,
    job_to_dict,
    scrubbed_payload,
)
from app.models import Notification
from app.registration import register_user, validate_registration
from app.senders import RecordingSender
from services.handlers import RetryPolicy, handle_message
from services.parked import list_parked

POLICY = RetryPolicy(max_attempts=3, delays_ms=(100,))
CODE = re.compile(r"\b\d{6}\b")
LINK_TOKEN = re.compile(r"/verify-email/\S+")


@pytest.fixture
def registered(sessions, settings):
    with sessions() as session:
        return register_user(
            session,
            settings,
            validate_registration(
                {"name": "Ann", "email": "ann@example.com", "phone": "+16502530000"}
            ),
        )


def payload_of(sessions, notification_id):
    with sessions() as session:
        return json.dumps(session.get(Notification, notification_id).payload)


def stored_text(sessions, notification_id):
    with sessions() as session:
        return session.execute(
            text("SELECT CAST(payload AS TEXT) FROM notifications WHERE id = :id"),
            {"id": notification_id},
        ).scalar_one()


@pytest.mark.parametrize(
    ("job", "secret_field"),
    [
        (
            EmailJob("n1", "ann@example.com", "Welcome", "Confirm: https://x/verify-email/abc"),
            "text",
        ),
        (SmsJob("n2", "+16502530000", "Your code is 123456"), "body"),
    ],
)
def test_a_scrubbed_payload_loses_exactly_its_secret_field(job, secret_field):
    # app/ledger.py scrubs in SQL by SECRET_FIELD, the web's inline record in Python.
    payload = job_to_dict(job)
    scrubbed = scrubbed_payload(job.kind, payload)
    assert scrubbed[secret_field] == SCRUBBED_TEXT
    assert {k: v for k, v in scrubbed.items() if k != secret_field} == {
        k: v for k, v in payload.items() if k != secret_field
    }
    assert payload[secret_field] != SCRUBBED_TEXT  # the row's own payload is left alone


def test_a_sent_sms_keeps_no_code_and_a_sent_email_no_link_token(sessions, registered):
    by_channel = {n.channel: n for n in registered.notifications}
    assert CODE.search(payload_of(sessions, by_channel["sms"].id))  # needed until it is sent
    for channel, secret in (("sms", CODE), ("email", LINK_TOKEN)):
        notification = by_channel[channel]
        body = encode_job(job_from_dict(notification.payload))
        sender = RecordingSender()
        handle_message(body, channel=channel, sender=sender, sessions=sessions, policy=POLICY)
        assert len(sender.sent) == 1 and secret.search(str(sender.sent[0]))
        stored = payload_of(sessions, notification.id)
        assert not secret.search(stored), stored
        # The consumer's record takes the secret out in SQL; the same as the Python scrub, and
        # the stored form stays compact JSON.
        scrubbed = scrubbed_payload(channel, notification.payload)
        assert json.loads(stored) == scrubbed
        assert stored_text(sessions, notification.id) == compact_json(scrubbed)


def test_inline_sends_scrub_too(testapp, sessions):
    user = {"name": "Bo", "email": "bo@example.com", "phone": "+16502530001"}
    created = testapp.post_json("/api/users?mode=serial", user, status=201).json["user"]
    for notification in created["notifications"]:
        stored = payload_of(sessions, notification["id"])
        assert not CODE.search(stored) and not LINK_TOKEN.search(stored), stored


class StubChannel:
    """Just enough of a pika channel for list_parked: one parked SMS job."""

    def __init__(self, body):
        self.messages = [body]

    def basic_get(self, queue, auto_ack=False):
        if not self.messages:
            return None, None, None
        properties = SimpleNamespace(
            headers={"x-offload-reason": "gave up after 5 attempts"}, message_id="n1"
        )
        return SimpleNamespace(delivery_tag=1), properties, self.messages.pop()

    def basic_nack(self, tag, multiple=False, requeue=True):
        pass


def test_the_parked_listing_masks_codes():
    body = encode_job(SmsJob("n1", "+16502530000", "Your Offload verification code is 123456."))
    jobs = list_parked(StubChannel(body), "sms", 10)
    assert "123456" not in repr(jobs)
    from services.parked import print_parked

    out = io.StringIO()
    with redirect_stdout(out):
        print_parked("sms", jobs)
    assert "123456" not in out.getvalue() and "n1" in out.getvalue()
