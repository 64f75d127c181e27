"""International addresses (RFC 6531/IDNA) against a real SMTP server, with and without SMTPUTF8.

What registration accepts and what cannot be delivered (see docs/security.md): any address
email-validator accepts. A non-ASCII domain always goes out in its IDNA form; a non-ASCII local
part needs a server that offers SMTPUTF8, and without one the job fails permanently (parked,
status "failed" with the reason), never retried for ever.
"""

from __future__ import annotations

import pytest

from app.jobs import encode_job, job_from_dict
from app.models import Notification
from app.registration import register_user, validate_registration
from devstack.sinks.smtp import SmtpSink
from services.email import SmtpEmailSender
from services.handlers import Ack, Park, RetryPolicy, handle_message

POLICY = RetryPolicy(max_attempts=3, delays_ms=(100, 1000))
IDN_DOMAIN = "m@bücher.de"
UTF8_LOCAL = "josé@example.com"


@pytest.fixture(params=[True, False], ids=["smtputf8", "ascii-only"])
def sink(request, tmp_path):
    with SmtpSink(record_path=tmp_path / "mail.jsonl", delay=0, smtputf8=request.param) as sink:
        yield sink


def email_notification(sessions, settings, address):
    with sessions() as session:
        data = {"name": "Intl", "email": address, "phone": "+16502530000"}
        registered = register_user(session, settings, validate_registration(data))
        return next(n for n in registered.notifications if n.channel == "email")


def consume(sessions, sink, notification):
    sender = SmtpEmailSender(sink.host, sink.port, mail_from="Offload <no-reply@offload.example>")
    try:
        body = encode_job(job_from_dict(notification.payload))
        return handle_message(
            body, channel="email", sender=sender, sessions=sessions, policy=POLICY
        )
    finally:
        sender.close()


def row(sessions, notification_id):
    with sessions() as session:
        found = session.get(Notification, notification_id)
        return found.status, found.attempts, found.last_error


@pytest.mark.parametrize("address", [IDN_DOMAIN, UTF8_LOCAL])
def test_international_addresses_register(testapp, address):
    response = testapp.post_json(
        "/api/users?mode=queued",
        {"name": "Intl", "email": address, "phone": "+16502530000"},
        status=201,
    )
    assert response.json["user"]["email"] == address


def test_an_address_with_no_deliverable_form_is_refused_naming_the_field(testapp):
    # A domain with no IDNA form can never be sent to: refused at once, not parked later.
    response = testapp.post_json(
        "/api/users", {"name": "Intl", "email": "m@☃.net", "phone": "+16502530000"}, status=400
    )
    assert set(response.json["fields"]) == {"email"}


def test_idn_domain_goes_out_in_its_ascii_form(sessions, settings, sink):
    notification = email_notification(sessions, settings, IDN_DOMAIN)
    assert consume(sessions, sink, notification) == Ack("sent")
    [record] = sink.records()
    assert record["to"] == "m@xn--bcher-kva.de"
    assert row(sessions, notification.id)[:2] == ("sent", 1)


def test_non_ascii_local_part_uses_smtputf8_when_offered_and_parks_when_not(
    sessions, settings, sink
):
    notification = email_notification(sessions, settings, UTF8_LOCAL)
    verdict = consume(sessions, sink, notification)
    if sink.smtputf8:
        assert verdict == Ack("sent")
        [record] = sink.records()
        assert record["to"] == UTF8_LOCAL
        assert row(sessions, notification.id)[:2] == ("sent", 1)
    else:
        assert isinstance(verdict, Park) and "SMTPUTF8" in verdict.reason
        status, attempts, error = row(sessions, notification.id)
        assert (status, attempts) == ("failed", 1)
        assert "SMTPUTF8" in error and UTF8_LOCAL not in error
        assert sink.records() == []
