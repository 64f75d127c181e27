"""What a consumer does with one message, decided without touching the broker.

`handle_message` returns a verdict (ack, retry later, park) and the consumer loop carries it
out. Keeping this pure of pika makes every branch testable with an in-memory database and a
recording sender.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.jobs import MalformedJob, decode_job
from app.ledger import mark_attempt_failed, mark_sent, take_send_lease
from app.logs import redact
from app.models import Notification
from app.senders import PermanentSendError, Sender, TransientSendError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ack:
    reason: str  # "sent" or "already sent"


@dataclass(frozen=True)
class Retry:
    delay_ms: int
    reason: str


@dataclass(frozen=True)
class Park:
    reason: str


Verdict = Ack | Retry | Park


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    delays_ms: tuple[int, ...]
    send_lease_seconds: float = 30.0

    def delay_after(self, attempts: int, *, at_least_ms: int = 0) -> int:
        """Backoff before the next try, after `attempts` failed tries (1-based).

        `at_least_ms` is what the remote side asked for (a 429's Retry-After): the shortest
        configured delay that honours it, since retries wait in one TTL queue per delay.
        """
        delay = self.delays_ms[min(attempts, len(self.delays_ms)) - 1]
        if delay >= at_least_ms:
            return delay
        return next((d for d in sorted(self.delays_ms) if d >= at_least_ms), max(self.delays_ms))


def handle_message(
    body: bytes,
    *,
    channel: str,
    sender: Sender[Any],
    sessions: sessionmaker[Session],
    policy: RetryPolicy,
) -> Verdict:
    try:
        job = decode_job(body)
    except MalformedJob as exc:
        return Park(f"malformed job: {exc}")
    if job.kind != channel:
        return Park(f"a {job.kind} job on the {channel} queue")

    with session_scope(sessions) as session:
        notification = session.get(Notification, job.notification_id)
        if notification is None:
            return Park(f"unknown notification {job.notification_id}")
        if notification.status == "sent":
            # A redelivery (consumer died before its ack, broker restart): the ledger says it
            # already went out, so it must not go out twice.
            return Ack("already sent")
        if not take_send_lease(session, notification, policy.send_lease_seconds):
            # Another copy of this job is being sent right now: look again after a pause,
            # by which time the ledger says sent (ack) or the lease ran out (send).
            return Retry(policy.delays_ms[0], "another consumer is sending this notification")
        try:
            sender.send(job)
        except PermanentSendError as exc:
            mark_attempt_failed(session, notification, str(exc), status="failed")
            return Park(f"permanent failure: {exc}")
        except Exception as exc:
            # Transient, or unexpected (a bug, a library's surprise): counted alike, so nothing
            # retries for ever.
            error = str(exc)
            if not isinstance(exc, TransientSendError):
                log.exception("sending %s failed unexpectedly", job.notification_id)
                error = redact(f"unexpected error: {exc!r}")
            if notification.attempts + 1 >= policy.max_attempts:
                mark_attempt_failed(session, notification, error, status="failed")
                return Park(f"gave up after {notification.attempts} attempts: {error}")
            mark_attempt_failed(session, notification, error, status="queued")
            wait_ms = exc.retry_after_ms if isinstance(exc, TransientSendError) else 0
            return Retry(policy.delay_after(notification.attempts, at_least_ms=wait_ms), error)
        mark_sent(session, notification)
        return Ack("sent")
