"""The three ways a registration hands off its notifications.

    serial    send the email, then the SMS, inside the request
    parallel  send both at once in two greenlets, inside the request
    queued    publish the registration's one `user.registered` event and answer; the broker
              copies it to the email and the SMS queue, and the consumers send later

Whatever the mode, the notification rows and the event were already written with the user (the
outbox), and their status records what happened, so every mode leaves the same trace. In serial
and parallel modes the relay publishes the event once the inline sends are recorded, for the
other subscribers; the channel consumers find their rows sent and leave them.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from sqlalchemy.orm import Session

from app.config import BASELINE_MODE
from app.events import EventMessage
from app.jobs import EmailJob, Job, SmsJob, job_from_dict
from app.ledger import InlineOutcome, QueuedMarker, record_inline_sends
from app.messaging import Publisher, PublishError
from app.metrics import PUBLISH_FAILURES
from app.models import Notification
from app.senders import PermanentSendError, Sender, SendError

log = logging.getLogger(__name__)


BASELINE_ERROR = "benchmark baseline: not sent"


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
        queued_marker: QueuedMarker,
        inline_lease_seconds: float = 20.0,
        relay_grace_seconds: float = 30.0,
    ) -> None:
        self.email_sender = email_sender
        self.sms_sender = sms_sender
        self.publisher = publisher
        self.publish_timeout = publish_timeout
        self.queued_marker = queued_marker
        self._inline_lease_seconds = inline_lease_seconds
        self._relay_grace_seconds = relay_grace_seconds
        self._modes: dict[
            str, Callable[[Session, list[Notification], EventMessage | None], dict[str, float]]
        ] = {
            "serial": self.dispatch_serial,
            "parallel": self.dispatch_parallel,
            "queued": self.dispatch_queued,
            BASELINE_MODE: self.dispatch_nothing,
        }

    @staticmethod
    def initial_status(mode: str) -> tuple[str, str | None]:
        """The status (and note) a mode's rows are written with, decided before the commit."""
        if mode == BASELINE_MODE:
            return "skipped", BASELINE_ERROR
        return "pending", None

    def inline_lease_seconds(self, mode: str) -> float:
        """How long the rows of a mode that sends inside the request are written leased: as
        long as both sends may take one after the other (0: no lease, the consumers send)."""
        return self._inline_lease_seconds if mode in ("serial", "parallel") else 0.0

    def event_lease_seconds(self, mode: str) -> float:
        """How long a registration's event is written held by its request, out of the relay's
        reach: in queued mode the request publishes it (the relay's grace period); in the
        inline modes it is released once the sends are recorded, so the channel consumers find
        the rows already sent (the inline lease). 0: the relay publishes it at once."""
        if mode == "queued":
            return self._relay_grace_seconds
        return self.inline_lease_seconds(mode)

    def dispatch(
        self,
        mode: str,
        session: Session,
        notifications: list[Notification],
        *,
        event: EventMessage | None = None,
    ) -> dict[str, float]:
        """Hand the notifications off in `mode`; return the time each step took, in ms.

        `event` is the registration's `user.registered` (None for a resend, whose one job is
        published on its own). `mode` was checked by the caller (app/registration.py) against
        the modes it allows.
        """
        return self._modes[mode](session, notifications, event)

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

    def _record(
        self, session: Session, outcomes: list[SendOutcome], event: EventMessage | None
    ) -> dict[str, float]:
        recorded = []
        for outcome in outcomes:
            if outcome.error is None:
                recorded.append(InlineOutcome(outcome.notification))
                continue
            log.warning(
                "inline %s send failed: %s",
                outcome.notification.channel,
                outcome.error,
                extra={"notification_id": outcome.notification.id},
            )
            # Worth another try: leave it pending and the outbox relay queues it.
            status = "failed" if isinstance(outcome.error, PermanentSendError) else "pending"
            recorded.append(InlineOutcome(outcome.notification, str(outcome.error), status))
        record_inline_sends(session, recorded, release_event=event.id if event else None)
        return {outcome.notification.channel: outcome.elapsed_ms for outcome in outcomes}

    def dispatch_serial(
        self, session: Session, notifications: list[Notification], event: EventMessage | None
    ) -> dict[str, float]:
        return self._record(session, [self._send(n) for n in notifications], event)

    def dispatch_parallel(
        self, session: Session, notifications: list[Notification], event: EventMessage | None
    ) -> dict[str, float]:
        # The greenlets only talk to the SMTP server and the gateway; the session stays with
        # the request's greenlet, which records both outcomes.
        greenlets = [gevent.spawn(self._send, n) for n in notifications]
        gevent.joinall(greenlets, raise_error=True)
        return self._record(session, [greenlet.value for greenlet in greenlets], event)

    def dispatch_nothing(
        self, session: Session, notifications: list[Notification], event: EventMessage | None
    ) -> dict[str, float]:
        """The benchmark's insert-only baseline: the rows were written `skipped`."""
        return {}

    def dispatch_queued(
        self, session: Session, notifications: list[Notification], event: EventMessage | None
    ) -> dict[str, float]:
        """Publish the registration's event (a resend: its job) and answer without waiting for
        the broker's confirm.

        The rows and the event were committed `pending` with the user: that is the guarantee.
        The broker's confirm, when it comes, marks the event published and the rows `queued`;
        if it never comes (broker down, a nack, an event no queue was bound to, this process
        killed), the relay publishes the event once the request's hold on it runs out
        (RELAY_GRACE_SECONDS). So the request costs the frames it writes, not the broker's
        round trip to its disk. One message whatever the number of channels: the broker copies
        it to every queue bound to `user.registered`.
        """
        started = time.perf_counter()
        try:
            if event is None:
                self.publisher.publish(
                    [job_from_dict(n.payload) for n in notifications],
                    timeout=self.publish_timeout,
                    on_confirmed=functools.partial(self.queued_marker.mark, notifications),
                )
            else:
                self.publisher.publish_events(
                    [event],
                    timeout=self.publish_timeout,
                    on_confirmed=functools.partial(
                        self.queued_marker.mark, notifications, [event.id]
                    ),
                )
        except PublishError as exc:
            # The rows are committed and pending: the relay publishes them when it can.
            PUBLISH_FAILURES.inc()
            log.warning("publish failed, leaving it to the outbox relay: %s", exc)
        return {"publish": (time.perf_counter() - started) * 1000}
