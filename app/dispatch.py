"""The three ways a registration hands off its notifications.

    serial    send the email, then the SMS, inside the request
    parallel  send both at once in two greenlets, inside the request
    queued    publish both jobs (publisher confirms) and answer; consumers send later

Whatever the mode, the notification rows were already written with the user (the outbox), and
their status records what happened, so every mode leaves the same trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from sqlalchemy.orm import Session

from app.config import BASELINE_MODE, DISPATCH_MODES
from app.jobs import EmailJob, Job, SmsJob, job_from_dict
from app.ledger import mark_attempt_failed, mark_queued, mark_sent, mark_skipped
from app.messaging import Publisher, PublishError
from app.models import Notification
from app.senders import PermanentSendError, Sender, SendError

log = logging.getLogger(__name__)


class UnknownMode(ValueError):
    pass


@dataclass(frozen=True)
class SendOutcome:
    notification: Notification
    elapsed_ms: float
    error: SendError | None


class Dispatcher:
    def __init__(
        self,
        *,
        email_sender: Sender[EmailJob],
        sms_sender: Sender[SmsJob],
        publisher: Publisher,
        publish_timeout: float,
    ) -> None:
        self.email_sender = email_sender
        self.sms_sender = sms_sender
        self.publisher = publisher
        self.publish_timeout = publish_timeout
        self._modes: dict[str, Callable[[Session, list[Notification]], dict[str, float]]] = {
            "serial": self.dispatch_serial,
            "parallel": self.dispatch_parallel,
            "queued": self.dispatch_queued,
            BASELINE_MODE: self.dispatch_nothing,
        }

    def dispatch(
        self, mode: str, session: Session, notifications: list[Notification]
    ) -> dict[str, float]:
        """Hand the notifications off in `mode`; return the time each step took, in ms."""
        if mode not in self._modes:
            raise UnknownMode(f"mode must be one of {', '.join(DISPATCH_MODES)}")
        return self._modes[mode](session, notifications)

    def _send(self, notification: Notification) -> SendOutcome:
        job = job_from_dict(notification.payload)
        started = time.perf_counter()
        try:
            self._sender_for(job).send(job)
            error = None
        except SendError as exc:
            error = exc
        return SendOutcome(notification, (time.perf_counter() - started) * 1000, error)

    def _sender_for(self, job: Job) -> Any:
        return self.email_sender if isinstance(job, EmailJob) else self.sms_sender

    def _record(self, session: Session, outcome: SendOutcome) -> None:
        if outcome.error is None:
            mark_sent(session, outcome.notification)
            return
        log.warning(
            "inline %s send failed: %s",
            outcome.notification.channel,
            outcome.error,
            extra={"notification_id": outcome.notification.id},
        )
        # Worth another try: leave it pending and the outbox relay queues it.
        status = "failed" if isinstance(outcome.error, PermanentSendError) else "pending"
        mark_attempt_failed(session, outcome.notification, str(outcome.error), status=status)

    def dispatch_serial(
        self, session: Session, notifications: list[Notification]
    ) -> dict[str, float]:
        timings: dict[str, float] = {}
        for notification in notifications:
            outcome = self._send(notification)
            timings[notification.channel] = outcome.elapsed_ms
            self._record(session, outcome)
        return timings

    def dispatch_parallel(
        self, session: Session, notifications: list[Notification]
    ) -> dict[str, float]:
        # The greenlets only talk to the SMTP server and the gateway; the session stays with
        # the request's greenlet, which records both outcomes.
        greenlets = [gevent.spawn(self._send, n) for n in notifications]
        gevent.joinall(greenlets, raise_error=True)
        timings: dict[str, float] = {}
        for greenlet in greenlets:
            outcome: SendOutcome = greenlet.value
            timings[outcome.notification.channel] = outcome.elapsed_ms
            self._record(session, outcome)
        return timings

    def dispatch_nothing(
        self, session: Session, notifications: list[Notification]
    ) -> dict[str, float]:
        """The benchmark's insert-only baseline: close the outbox rows without sending."""
        mark_skipped(session, notifications)
        return {}

    def dispatch_queued(
        self, session: Session, notifications: list[Notification]
    ) -> dict[str, float]:
        jobs = [job_from_dict(n.payload) for n in notifications]
        started = time.perf_counter()
        try:
            self.publisher.publish(jobs, timeout=self.publish_timeout)
        except PublishError as exc:
            # The rows are committed and pending: the relay publishes them when it can.
            log.warning("publish failed, leaving the jobs to the outbox relay: %s", exc)
            return {"publish": (time.perf_counter() - started) * 1000}
        timings = {"publish": (time.perf_counter() - started) * 1000}
        mark_queued(session, notifications)
        return timings
