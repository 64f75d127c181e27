"""Item 10 of issue 10: no window for a duplicate send.

A stale lease holder never overwrites the ledger, inline sends hold a lease, the grace period
outlasts the longest inline send, lease times come from the database's clock, and the relay's
lease covers its whole batch.
"""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import event, update

from app.config import ConfigError, Settings
from app.jobs import encode_job, job_from_dict
from app.models import Notification
from app.senders import RecordingSender, TransientSendError
from services.handlers import Claim, RetryPolicy, SendResult, claim_batch, record_batch
from services.relay import claim_pending

POLICY = RetryPolicy(max_attempts=5, delays_ms=(100, 1000))


def expire_leases(sessions):
    with sessions() as session:
        session.execute(update(Notification).values(send_lease_until=None))
        session.commit()


def row(sessions, notification_id):
    with sessions() as session:
        found = session.get(Notification, notification_id)
        session.expunge(found)
        return found


def test_a_stale_lease_holder_cannot_overwrite_what_the_new_holder_recorded(
    sessions, email_notification
):
    body = encode_job(job_from_dict(email_notification.payload))
    (first,) = claim_batch([body], channel="email", sessions=sessions, policy=POLICY)
    assert isinstance(first, Claim)
    expire_leases(sessions)  # the first holder stalled past its lease
    (second,) = claim_batch([body], channel="email", sessions=sessions, policy=POLICY)
    assert isinstance(second, Claim)
    record_batch([SendResult(second, None)], sessions=sessions, policy=POLICY)
    assert row(sessions, email_notification.id).status == "sent"
    # The stalled holder wakes up with a failure: it no longer holds the lease, so the ledger
    # keeps "sent" (otherwise the retry would send the email a second time).
    stale = SendResult(first, TransientSendError("451 try later"))
    record_batch([stale], sessions=sessions, policy=POLICY)
    assert row(sessions, email_notification.id).status == "sent"


class LeaseProbe(RecordingSender):
    """While the request sends inline, a consumer holding a relayed copy tries to claim it."""

    def __init__(self, sessions_holder):
        super().__init__()
        self.sessions_holder = sessions_holder
        self.claims = []

    def send(self, job):
        body = encode_job(job)
        self.claims.append(
            claim_batch([body], channel=job.kind, sessions=self.sessions_holder[0], policy=POLICY)[
                0
            ]
        )
        super().send(job)


@pytest.fixture
def probe_holder():
    return []


@pytest.fixture
def email_sender(probe_holder):
    return LeaseProbe(probe_holder)


def test_inline_sends_hold_a_send_lease(testapp, sessions, probe_holder, email_sender):
    probe_holder.append(sessions)
    user = {"name": "Bo", "email": "bo@example.com", "phone": "+16502530001"}
    created = testapp.post_json("/api/users?mode=serial", user, status=201).json["user"]
    assert len(email_sender.sent) == 1
    # The consumer was told to come back later, not handed the row to send a second time.
    assert not any(isinstance(claim, Claim) for claim in email_sender.claims)
    statuses = {n["channel"]: n["status"] for n in created["notifications"]}
    assert statuses == {"email": "sent", "sms": "sent"}


@pytest.mark.parametrize("timeouts", [{"smtp_timeout": 10.0}, {"sms_timeout": 10.0}])
def test_the_relay_grace_must_outlast_the_longest_inline_send(timeouts):
    with pytest.raises(ConfigError, match="RELAY_GRACE_SECONDS"):
        Settings(relay_grace_seconds=5.0, **timeouts).validate()


def test_the_default_grace_outlasts_both_inline_sends():
    settings = Settings().validate()
    assert settings.relay_grace_seconds > settings.smtp_timeout + settings.sms_timeout


def test_leases_are_timed_by_the_database_clock(sessions, email_notification):
    """No lease UPDATE sends this host's idea of the time: the database supplies it."""
    from datetime import datetime

    sent_times = []
    engine = sessions.kw["bind"]

    @event.listens_for(engine, "before_cursor_execute")
    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE"):
            rows = parameters if executemany else [parameters]
            for params in rows:
                values = params.values() if isinstance(params, dict) else params
                sent_times.extend(
                    v for v in values if isinstance(v, datetime | str) and ":" in str(v)
                )

    body = encode_job(job_from_dict(email_notification.payload))
    claim_batch([body], channel="email", sessions=sessions, policy=POLICY)
    with sessions() as session:
        claim_pending(session, relay_id="r1", batch_size=10, grace_seconds=0, publish_timeout=1.0)
    event.remove(engine, "before_cursor_execute", capture)
    assert sent_times == []


def test_the_relay_lease_covers_a_whole_batch_of_confirmed_publishes():
    from services.relay import relay_lease_seconds

    assert relay_lease_seconds(batch_size=200, publish_timeout=1.0) > 200


def register_for_inline_sends(session, settings, name):
    """A registration as serial and parallel modes write it: rows and event held by the
    request. Returns it, its email row and its SMS row."""
    from app.registration import register_user, validate_registration

    phone = {"cy": "+16502530002", "di": "+16502530003"}[name]
    registered = register_user(
        session,
        settings,
        validate_registration({"name": name, "email": f"{name}@example.com", "phone": phone}),
        send_lease_seconds=60.0,
        event_lease_seconds=60.0,
    )
    email, sms = sorted(registered.notifications, key=lambda n: n.channel)
    return registered, email, sms


def test_the_inline_record_changes_only_the_rows_whose_lease_it_still_holds(sessions, settings):
    """The request records its own sends row by row, each UPDATE conditional on its token: a
    row another holder took over keeps what that holder wrote, and gets no event from here."""
    from sqlalchemy import select

    from app.events import EVENTS, NOTIFICATION_SENT, REQUEST_HOLDER
    from app.jobs import SCRUBBED_TEXT
    from app.ledger import InlineOutcome, record_inline_sends

    with sessions() as session:
        registered, email, sms = register_for_inline_sends(session, settings, "cy")
        unsent_payload = dict(email.payload)
        session.execute(
            update(Notification).where(Notification.id == email.id).values(send_lease_token="x")
        )
        session.commit()
        record_inline_sends(
            session,
            [InlineOutcome(email), InlineOutcome(sms)],
            release_event=registered.event.id,
        )

    taken_over, recorded = row(sessions, email.id), row(sessions, sms.id)
    assert (taken_over.status, taken_over.send_lease_token, taken_over.attempts) == (
        "pending",
        "x",
        0,
    )
    assert taken_over.payload == unsent_payload  # its secret still there for its new holder
    assert (recorded.status, recorded.send_lease_token, recorded.attempts) == ("sent", None, 1)
    assert recorded.sent_at is not None and recorded.payload["body"] == SCRUBBED_TEXT
    with sessions() as session:
        sent_events = (
            session.execute(select(EVENTS.c.body).where(EVENTS.c.type == NOTIFICATION_SENT))
            .scalars()
            .all()
        )
        held = session.execute(
            select(EVENTS.c.claimed_by).where(EVENTS.c.id == registered.event.id)
        ).scalar_one()
    assert [body["data"]["notification_id"] for body in sent_events] == [sms.id]
    assert held != REQUEST_HOLDER  # released to the relay in the same transaction


def test_an_inline_failure_is_recorded_with_its_retry_status(sessions, settings):
    from app.ledger import InlineOutcome, record_inline_sends

    with sessions() as session:
        _registered, email, sms = register_for_inline_sends(session, settings, "di")
        unsent_payload = dict(email.payload)
        record_inline_sends(
            session,
            [
                InlineOutcome(email, "451 try later"),
                InlineOutcome(sms, "400 bad number", retry_status="failed"),
            ],
        )
    retried, failed = row(sessions, email.id), row(sessions, sms.id)
    assert (retried.status, retried.last_error, retried.attempts) == ("pending", "451 try later", 1)
    assert retried.send_lease_token is None and retried.payload == unsent_payload
    assert (failed.status, failed.last_error, failed.sent_at) == ("failed", "400 bad number", None)


_registered = itertools.count()


def registered_email_bodies(sessions, settings, count):
    from app.registration import register_user, validate_registration

    bodies = {}
    for _ in range(count):
        number = next(_registered)
        data = {
            "name": "Di",
            "email": f"di{number}@example.com",
            "phone": f"+165025300{number:02d}",
        }
        with sessions() as session:
            registered = register_user(session, settings, validate_registration(data))
            email = next(n for n in registered.notifications if n.channel == "email")
            bodies[email.id] = encode_job(job_from_dict(email.payload))
    return bodies


def test_a_batch_record_changes_only_the_rows_whose_lease_it_still_holds(sessions, settings):
    from app.models import Event

    bodies = registered_email_bodies(sessions, settings, 3)
    ours = claim_batch(list(bodies.values()), channel="email", sessions=sessions, policy=POLICY)
    assert all(isinstance(claim, Claim) for claim in ours)
    taken_over_id = ours[0].job.notification_id
    # The first row's lease ran out, and another consumer took it and is sending it now.
    expire_leases(sessions)
    (theirs,) = claim_batch(
        [bodies[taken_over_id]], channel="email", sessions=sessions, policy=POLICY
    )
    assert isinstance(theirs, Claim)

    record_batch([SendResult(claim, None) for claim in ours], sessions=sessions, policy=POLICY)

    assert row(sessions, taken_over_id).status != "sent"
    assert row(sessions, taken_over_id).send_lease_token == theirs.lease_token
    assert "/verify-email" in row(sessions, taken_over_id).payload["text"]  # theirs to scrub
    for claim in ours[1:]:
        recorded = row(sessions, claim.job.notification_id)
        assert recorded.status == "sent" and recorded.send_lease_token is None
        assert "/verify-email" not in recorded.payload["text"]
    with sessions() as session:
        sent_events = session.query(Event).filter(Event.type == "notification.sent").all()
    assert sorted(e.body["data"]["notification_id"] for e in sent_events) == sorted(
        claim.job.notification_id for claim in ours[1:]
    )


def test_a_batch_record_takes_as_many_statements_for_many_rows_as_for_two(sessions, settings):
    # SQLite's one write lock is held from the record's first write to its commit, and every
    # other writer (the web's registrations first) waits meanwhile: one statement per row held
    # it about 70 us a row, 2 ms for a batch of 30.
    def statements_of_a_record(count):
        bodies = registered_email_bodies(sessions, settings, count)
        claims = claim_batch(
            list(bodies.values()), channel="email", sessions=sessions, policy=POLICY
        )
        executed = []
        engine = sessions.kw["bind"]

        def count_statement(_conn, _cursor, statement, _parameters, _context, _many):
            executed.append(statement.split()[0])

        event.listen(engine, "before_cursor_execute", count_statement)
        try:
            record_batch(
                [SendResult(claim, None) for claim in claims], sessions=sessions, policy=POLICY
            )
        finally:
            event.remove(engine, "before_cursor_execute", count_statement)
        with sessions() as session:
            session.execute(update(Notification).values(status="failed"))  # out of the next batch
            session.commit()
        return executed

    assert statements_of_a_record(2) == statements_of_a_record(6)
