"""Every branch of what a consumer does with a message, against a real (SQLite) ledger."""

from app.jobs import EmailJob, encode_job, job_from_dict
from app.models import Notification, User
from app.senders import PermanentSendError, RecordingSender, TransientSendError
from services.handlers import Ack, Park, Retry, RetryPolicy, handle_message

POLICY = RetryPolicy(max_attempts=3, delays_ms=(100, 1000))


def body_of(notification):
    return encode_job(job_from_dict(notification.payload))


def handle(body, sender, sessions, channel="email"):
    return handle_message(body, channel=channel, sender=sender, sessions=sessions, policy=POLICY)


def status_of(sessions, notification_id):
    with sessions() as session:
        row = session.get(Notification, notification_id)
        return row.status, row.attempts, row.last_error


def test_sends_and_records(sessions, email_notification):
    sender = RecordingSender()
    assert handle(body_of(email_notification), sender, sessions) == Ack("sent")
    assert [job.notification_id for job in sender.sent] == [email_notification.id]
    assert status_of(sessions, email_notification.id) == ("sent", 1, None)


def test_redelivery_of_a_sent_job_is_skipped(sessions, email_notification):
    sender = RecordingSender()
    handle(body_of(email_notification), sender, sessions)
    assert handle(body_of(email_notification), sender, sessions) == Ack("already sent")
    assert len(sender.sent) == 1


def test_transient_failures_retry_with_backoff_then_park(sessions, email_notification):
    sender = RecordingSender(fail_with=TransientSendError("451 try later"))
    body = body_of(email_notification)
    assert handle(body, sender, sessions) == Retry(100, "451 try later")
    assert status_of(sessions, email_notification.id) == ("queued", 1, "451 try later")
    assert handle(body, sender, sessions) == Retry(1000, "451 try later")
    verdict = handle(body, sender, sessions)
    assert isinstance(verdict, Park) and "gave up after 3 attempts" in verdict.reason
    assert status_of(sessions, email_notification.id)[:2] == ("failed", 3)


def test_permanent_failure_parks_at_once(sessions, email_notification):
    sender = RecordingSender(fail_with=PermanentSendError("550 no such user"))
    verdict = handle(body_of(email_notification), sender, sessions)
    assert isinstance(verdict, Park) and "550 no such user" in verdict.reason
    assert status_of(sessions, email_notification.id) == ("failed", 1, "550 no such user")


def test_malformed_message_is_parked_without_sending(sessions):
    sender = RecordingSender()
    verdict = handle(b"{oops", sender, sessions)
    assert isinstance(verdict, Park) and verdict.reason.startswith("malformed job")
    assert sender.sent == []


def test_unknown_notification_is_parked(sessions):
    sender = RecordingSender()
    body = encode_job(EmailJob(notification_id="missing", to="a@b.example", subject="s", text="t"))
    assert handle(body, sender, sessions) == Park("unknown notification missing")
    assert sender.sent == []


def test_job_on_the_wrong_queue_is_parked(sessions, email_notification):
    verdict = handle(body_of(email_notification), RecordingSender(), sessions, channel="sms")
    assert verdict == Park("a email job on the sms queue")


def test_register_user_writes_the_outbox_in_the_same_transaction(sessions, email_notification):
    with sessions() as session:
        user = session.get(User, email_notification.user_id)
        assert sorted(n.channel for n in user.notifications) == ["email", "sms"]
        assert all(n.status == "pending" for n in user.notifications)


def test_a_job_whose_notification_another_consumer_is_sending_waits(sessions, email_notification):
    from app.ledger import take_send_lease

    with sessions() as session:
        row = session.get(Notification, email_notification.id)
        assert take_send_lease(session, row, 30)  # a first consumer holds it
    sender = RecordingSender()
    verdict = handle(body_of(email_notification), sender, sessions)
    assert verdict == Retry(100, "another consumer is sending this notification")
    assert sender.sent == []


def test_an_expired_lease_is_taken_over(sessions, email_notification):
    from app.ledger import take_send_lease

    with sessions() as session:
        row = session.get(Notification, email_notification.id)
        assert take_send_lease(session, row, -1)  # the holder died; its lease has run out
    sender = RecordingSender()
    assert handle(body_of(email_notification), sender, sessions) == Ack("sent")
    assert len(sender.sent) == 1
