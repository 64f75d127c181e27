"""A registration's one message, its `user.registered` event, on the email and SMS queues: each
consumer finds its own row by the event's id and sends it once (against a real SQLite ledger)."""

from sqlalchemy import delete, select, update

from app.events import USER_EMAIL_VERIFIED, encode_event, user_event
from app.jobs import encode_job, job_from_dict
from app.ledger import take_send_lease
from app.models import Event, Notification, User, utcnow
from app.senders import RecordingSender
from services.handlers import Ack, Claim, Park, Retry, RetryPolicy, claim_batch, handle_message

POLICY = RetryPolicy(max_attempts=3, delays_ms=(100, 1000))


def event_body(sessions, event_id):
    with sessions() as session:
        return encode_event(session.get(Event, event_id).body)


def handle(body, sessions, channel, sender=None):
    sender = sender or RecordingSender()
    verdict = handle_message(body, channel=channel, sender=sender, sessions=sessions, policy=POLICY)
    return verdict, sender.sent


def rows_of(sessions, event_id):
    with sessions() as session:
        rows = session.scalars(select(Notification).where(Notification.event_id == event_id))
        return {row.channel: row for row in rows}


def set_status(sessions, notification_id, status):
    with sessions() as session:
        session.execute(
            update(Notification).where(Notification.id == notification_id).values(status=status)
        )
        session.commit()


def test_the_event_names_one_row_per_channel_and_each_consumer_sends_its_own(
    sessions, email_notification
):
    event_id = email_notification.event_id
    rows = rows_of(sessions, event_id)
    assert sorted(rows) == ["email", "sms"]
    body = event_body(sessions, event_id)

    verdict, sent = handle(body, sessions, "email")
    assert verdict == Ack("sent")
    # The job comes from the outbox row: the event itself names no recipient.
    assert [(job.kind, job.to, job.notification_id) for job in sent] == [
        ("email", "ann@example.com", rows["email"].id)
    ]
    verdict, sent = handle(body, sessions, "sms")
    assert verdict == Ack("sent")
    assert [(job.kind, job.to) for job in sent] == [("sms", "+16502530000")]
    assert {row.status for row in rows_of(sessions, event_id).values()} == {"sent"}


def test_a_redelivered_event_sends_nothing_twice(sessions, email_notification):
    body = event_body(sessions, email_notification.event_id)
    handle(body, sessions, "email")
    assert handle(body, sessions, "email") == (Ack("already sent"), [])


def test_an_event_after_a_job_of_the_same_row_sends_nothing(sessions, email_notification):
    handle(encode_job(job_from_dict(email_notification.payload)), sessions, "email")
    body = event_body(sessions, email_notification.event_id)
    assert handle(body, sessions, "email") == (Ack("already sent"), [])


def test_rows_that_are_not_the_events_to_send_are_acknowledged_untouched(
    sessions, email_notification
):
    """Held over an SMS budget, skipped by the baseline, given up on: each waits for a job of
    its own (or none), never for the registration's event."""
    for status in ("held", "skipped", "failed"):
        set_status(sessions, email_notification.id, status)
        verdict, sent = handle(event_body(sessions, email_notification.event_id), sessions, "email")
        assert (verdict, sent) == (Ack(f"nothing to send: the notification is {status}"), [])
        assert rows_of(sessions, email_notification.event_id)["email"].status == status


def test_a_row_being_sent_elsewhere_is_looked_at_again_later(sessions, email_notification):
    with sessions() as session:
        # An inline send (serial mode) or another consumer holds the row.
        assert take_send_lease(session, session.get(Notification, email_notification.id), 30)
    verdict, sent = handle(event_body(sessions, email_notification.event_id), sessions, "email")
    assert (verdict, sent) == (Retry(100, "another consumer is sending this notification"), [])


def test_two_copies_of_one_event_in_a_batch_claim_the_row_once(sessions, email_notification):
    body = event_body(sessions, email_notification.event_id)
    first, second = claim_batch([body, body], channel="email", sessions=sessions, policy=POLICY)
    assert isinstance(first, Claim) and first.job.notification_id == email_notification.id
    assert second == Retry(100, "another copy is being sent")


def test_an_event_whose_user_is_gone_is_acknowledged(sessions, email_notification):
    body = event_body(sessions, email_notification.event_id)
    with sessions() as session:
        # As an expired registration gives way: its rows go with it (ON DELETE CASCADE).
        session.execute(delete(User).where(User.id == email_notification.user_id))
        session.commit()
    assert handle(body, sessions, "email") == (
        Ack("no email notification for this registration"),
        [],
    )


def test_other_events_and_broken_ones_are_parked(sessions, email_notification):
    other = encode_event(
        user_event(USER_EMAIL_VERIFIED, email_notification.user_id, utcnow())["body"]
    )
    assert handle(other, sessions, "email") == (
        Park("a user.email_verified event on the email queue"),
        [],
    )
    verdict, _ = handle(b'{"v": 1, "type": "user.registered"}', sessions, "email")
    assert isinstance(verdict, Park) and verdict.reason.startswith("malformed event")
