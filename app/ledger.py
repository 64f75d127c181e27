"""The notification ledger: every change of a notification's status goes through here.

Used by the request path (serial and parallel modes send inline; queued mode marks rows queued)
and by the consumers, so every mode leaves the same trace. Each function commits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

import gevent
from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from app.db import session_scope
from app.models import Notification, utcnow

log = logging.getLogger(__name__)

# The consumers' batch statements go through SQLAlchemy Core on the table: the ORM's bulk-UPDATE
# path adds more CPU than the statement itself, and these run for every job.
NOTIFICATIONS = cast(Table, Notification.__table__)

MAX_ERROR_LENGTH = 1000


def mark_queued(session: Session, notifications: Sequence[Notification]) -> None:
    """Mark rows the broker confirmed as queued, in one UPDATE (the relay's batches)."""
    mark_queued_ids(session, [n.id for n in notifications])
    for notification in notifications:
        if notification.status == "pending":
            set_committed_value(notification, "status", "queued")


def mark_queued_ids(session: Session, notification_ids: Sequence[str]) -> None:
    # Only pending rows: a fast consumer may already have marked the row sent.
    session.execute(
        update(Notification)
        .where(Notification.id.in_(notification_ids), Notification.status == "pending")
        .values(status="queued", queued_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


class QueuedMarker:
    """Marks the rows the broker confirmed `queued`, in batches, off the request's path.

    The broker's confirm arrives (in a callback on the hub) after the response has gone; its rows
    stay `pending` for up to `interval` seconds more, then one UPDATE marks every row confirmed
    meanwhile. That costs one small transaction per batch instead of
    one per registration. Nothing depends on the mark but the relay, which leaves a pending row
    alone for RELAY_GRACE_SECONDS: a mark lost with its process only means the relay publishes
    those jobs again, and the consumers' ledger check keeps that from sending anything twice.
    With `interval` 0 the rows are marked at once, in the caller's greenlet.
    """

    def __init__(self, sessions: sessionmaker[Session], *, interval: float) -> None:
        self.sessions = sessions
        self.interval = interval
        self._ids: list[str] = []
        self._flusher: gevent.Greenlet[[], None] | None = None

    def mark(self, notifications: Sequence[Notification]) -> None:
        for notification in notifications:
            notification.status = "queued"  # what the response shows; the row follows
        self._ids.extend(n.id for n in notifications)
        if self.interval <= 0 and gevent.getcurrent() is not gevent.get_hub():
            self.flush()
        elif self._flusher is None:
            # A confirm arrives in a callback on the hub, which must not wait for the database.
            self._flusher = gevent.spawn_later(self.interval, self.flush)

    def flush(self) -> None:
        self._flusher = None
        ids, self._ids = self._ids, []
        if not ids:
            return
        try:
            with session_scope(self.sessions) as session:
                mark_queued_ids(session, ids)
        except SQLAlchemyError as exc:
            log.warning(
                "could not mark %d confirmed rows queued (the relay will publish them again): %s",
                len(ids),
                exc,
            )

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.kill(block=False)
        self.flush()


def record_inline_sends(session: Session, outcomes: Sequence[InlineOutcome]) -> None:
    """Record the request's own sends (serial and parallel modes) in one transaction."""
    now = utcnow()
    for outcome in outcomes:
        notification = outcome.notification
        values: dict[str, object]
        if outcome.error is None:
            values = {"status": "sent", "sent_at": now, "last_error": None}
        else:
            values = {
                "status": outcome.retry_status,
                "last_error": outcome.error[:MAX_ERROR_LENGTH],
            }
        session.execute(
            update(Notification)
            .where(Notification.id == notification.id)
            .values(attempts=Notification.attempts + 1, send_lease_until=None, **values)
            .execution_options(synchronize_session=False)
        )
        for name, value in values.items():
            setattr(notification, name, value)
        notification.attempts = (notification.attempts or 0) + 1
    session.commit()


@dataclass(frozen=True)
class InlineOutcome:
    notification: Notification
    # None when the server accepted the message; otherwise what went wrong, and the status the
    # row is left in: "pending" (the relay tries again) or "failed".
    error: str | None = None
    retry_status: str = "pending"


def take_send_lease(session: Session, notification: Notification, seconds: float) -> bool:
    """Claim the right to send this notification now; False if another consumer holds it."""
    leased = take_send_leases(session, [notification.id], seconds)
    session.commit()
    return notification.id in leased


def take_send_leases(
    session: Session, notification_ids: Sequence[str], seconds: float
) -> dict[str, int]:
    """Lease every unsent, unleased row of these in one UPDATE; {id: attempts} of those leased.

    The caller commits. A row already sent, or leased by another consumer whose lease has not
    run out, is left alone and not returned.
    """
    now = utcnow()
    rows = session.connection().execute(
        update(NOTIFICATIONS)
        .where(
            NOTIFICATIONS.c.id.in_(notification_ids),
            NOTIFICATIONS.c.status != "sent",
            or_(NOTIFICATIONS.c.send_lease_until.is_(None), NOTIFICATIONS.c.send_lease_until < now),
        )
        .values(send_lease_until=now + timedelta(seconds=seconds))
        .returning(NOTIFICATIONS.c.id, NOTIFICATIONS.c.attempts)
    )
    return {notification_id: attempts for notification_id, attempts in rows}


def notification_statuses(session: Session, notification_ids: Sequence[str]) -> dict[str, str]:
    rows = session.execute(
        select(Notification.id, Notification.status).where(Notification.id.in_(notification_ids))
    )
    return {notification_id: status for notification_id, status in rows}


@dataclass(frozen=True)
class Failure:
    notification_id: str
    error: str
    # "failed": no retry follows. "queued": a retry is scheduled through the broker.
    status: str


_RECORD_FAILURE = (
    update(NOTIFICATIONS)
    .where(NOTIFICATIONS.c.id == bindparam("failed_id"))
    .values(
        attempts=NOTIFICATIONS.c.attempts + 1,
        status=bindparam("new_status"),
        last_error=bindparam("error"),
        send_lease_until=None,
    )
)


def record_sends(session: Session, sent_ids: Sequence[str], failures: Sequence[Failure]) -> None:
    """Record the results of a batch of sends in one transaction, and commit."""
    connection = session.connection()
    if sent_ids:
        connection.execute(
            update(NOTIFICATIONS)
            .where(NOTIFICATIONS.c.id.in_(sent_ids))
            .values(
                status="sent",
                attempts=NOTIFICATIONS.c.attempts + 1,
                sent_at=utcnow(),
                last_error=None,
                send_lease_until=None,
            )
        )
    if failures:
        connection.execute(
            _RECORD_FAILURE,
            [
                {
                    "failed_id": failure.notification_id,
                    "new_status": failure.status,
                    "error": failure.error[:MAX_ERROR_LENGTH],
                }
                for failure in failures
            ],
        )
    session.commit()
