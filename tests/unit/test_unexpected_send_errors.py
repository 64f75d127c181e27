"""An exception no sender foresaw counts as an attempt and is parked after MAX_ATTEMPTS."""

from app.jobs import encode_job, job_from_dict
from app.models import Notification
from app.registration import register_user, validate_registration
from app.senders import TransientSendError
from services.handlers import Park, Retry, RetryPolicy, handle_message

POLICY = RetryPolicy(max_attempts=3, delays_ms=(100, 1000, 5000))


class Exploding:
    def __init__(self, exc):
        self.exc = exc

    def send(self, job):
        raise self.exc


def notification_of(sessions, settings, channel):
    with sessions() as session:
        data = {"name": "Ann", "email": "ann@example.com", "phone": "+16502530000"}
        registered = register_user(session, settings, validate_registration(data))
        return next(n for n in registered.notifications if n.channel == channel)


def test_unexpected_exception_is_counted_and_parked_after_max_attempts(sessions, settings):
    notification = notification_of(sessions, settings, "email")
    body = encode_job(job_from_dict(notification.payload))
    sender = Exploding(UnicodeEncodeError("ascii", "josé@example.com", 3, 4, "no"))
    verdicts = [
        handle_message(body, channel="email", sender=sender, sessions=sessions, policy=POLICY)
        for _ in range(POLICY.max_attempts)
    ]
    assert [type(v) for v in verdicts] == [Retry, Retry, Park]
    with sessions() as session:
        row = session.get(Notification, notification.id)
        assert (row.status, row.attempts) == ("failed", 3)
        assert "UnicodeEncodeError" in row.last_error
        assert "josé@example.com" not in row.last_error  # masked


def test_retry_after_from_the_remote_side_sets_the_retry_delay(sessions, settings):
    notification = notification_of(sessions, settings, "sms")
    body = encode_job(job_from_dict(notification.payload))
    sender = Exploding(TransientSendError("429", retry_after_ms=3000))
    verdict = handle_message(body, channel="sms", sender=sender, sessions=sessions, policy=POLICY)
    # The shortest configured delay (each has its TTL queue) that honours the 3 s asked for.
    assert verdict == Retry(5000, "429")
