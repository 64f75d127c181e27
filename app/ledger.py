"""The notification ledger: every change of a notification's status goes through here.

Used by the request path (serial and parallel modes send inline; queued mode marks rows queued)
and by the consumers, so every mode leaves the same trace. Each function commits. A row recorded
sent keeps its job without the secret it carried (the SMS code, the email's link token).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import gevent
from sqlalchemy import JSON, Table, bindparam, case, or_, select, tuple_, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import ColumnElement

from app.db import database_now, session_scope
from app.jobs import job_from_dict, job_to_dict, scrub_job
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
        .values(status="queued", queued_at=database_now())
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


def new_lease_token() -> str:
    return uuid.uuid4().hex


def record_inline_sends(session: Session, outcomes: Sequence[InlineOutcome]) -> None:
    """Record the request's own sends (serial and parallel modes) in one transaction.

    The rows were written holding a send lease (app/registration.py); each UPDATE is
    conditional on its token, like the consumers' record.
    """
    now = utcnow()
    for outcome in outcomes:
        notification = outcome.notification
        values: dict[str, object]
        if outcome.error is None:
            values = {
                "status": "sent",
                "sent_at": now,
                "last_error": None,
                "payload": scrubbed_payload(notification.payload),
            }
        else:
            values = {
                "status": outcome.retry_status,
                "last_error": outcome.error[:MAX_ERROR_LENGTH],
            }
        session.execute(
            update(Notification)
            .where(
                Notification.id == notification.id,
                Notification.send_lease_token == notification.send_lease_token,
            )
            .values(
                attempts=Notification.attempts + 1,
                send_lease_until=None,
                send_lease_token=None,
                **values,
            )
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
    leased = take_send_leases(session, [notification.id], seconds, new_lease_token())
    session.commit()
    return notification.id in leased


def send_lease_free() -> ColumnElement[bool]:
    """No one holds the row's send lease, by the database's clock."""
    return or_(
        NOTIFICATIONS.c.send_lease_until.is_(None),
        NOTIFICATIONS.c.send_lease_until < database_now(),
    )


def take_send_leases(
    session: Session, notification_ids: Sequence[str], seconds: float, token: str
) -> dict[str, int]:
    """Lease every unsent, unleased row of these in one UPDATE; {id: attempts} of those leased.

    The caller commits. A row already sent, or leased by another consumer whose lease has not
    run out, is left alone and not returned. `token` marks the rows as this claim's: the
    record of their results (record_sends) changes only rows that still carry it.
    """
    rows = session.connection().execute(
        update(NOTIFICATIONS)
        .where(
            NOTIFICATIONS.c.id.in_(notification_ids),
            NOTIFICATIONS.c.status != "sent",
            send_lease_free(),
        )
        .values(send_lease_until=database_now(seconds), send_lease_token=token)
        .returning(NOTIFICATIONS.c.id, NOTIFICATIONS.c.attempts)
    )
    return {notification_id: attempts for notification_id, attempts in rows}


def notification_statuses(session: Session, notification_ids: Sequence[str]) -> dict[str, str]:
    rows = session.execute(
        select(Notification.id, Notification.status).where(Notification.id.in_(notification_ids))
    )
    return {notification_id: status for notification_id, status in rows}


def scrubbed_payload(payload: dict[str, object]) -> dict[str, object]:
    """A sent job's payload without its secret (the code, the link token)."""
    return job_to_dict(scrub_job(job_from_dict(payload)))


@dataclass(frozen=True)
class Sent:
    notification_id: str
    lease_token: str
    # The job as the outbox keeps it once sent: the secret removed (app.jobs.scrub_job).
    payload: dict[str, object]


@dataclass(frozen=True)
class Failure:
    notification_id: str
    error: str
    # "failed": no retry follows. "queued": a retry is scheduled through the broker.
    status: str
    lease_token: str = ""


_RECORD_FAILURE = (
    update(NOTIFICATIONS)
    .where(
        NOTIFICATIONS.c.id == bindparam("failed_id"),
        NOTIFICATIONS.c.send_lease_token == bindparam("token"),
    )
    .values(
        attempts=NOTIFICATIONS.c.attempts + 1,
        status=bindparam("new_status"),
        last_error=bindparam("error"),
        send_lease_until=None,
        send_lease_token=None,
        # A retry is a new hand-off to the broker: the sweeper counts from here.
        queued_at=database_now(),
    )
)


def record_sends(session: Session, sent: Sequence[Sent], failures: Sequence[Failure]) -> None:
    """Record the results of a batch of sends in one transaction, and commit.

    Every UPDATE is conditional on the lease token the claim wrote: a sender whose lease ran
    out and was taken over by another consumer changes nothing (its message comes back later
    and the ledger decides again).
    """
    connection = session.connection()
    if sent:
        # One statement for the whole batch, as before the scrub: each row's scrubbed payload
        # is picked by its id, and only rows still carrying their claim's token change.
        scrubbed = case(
            {s.notification_id: bindparam(None, s.payload, type_=JSON, unique=True) for s in sent},
            value=NOTIFICATIONS.c.id,
        )
        connection.execute(
            update(NOTIFICATIONS)
            .where(
                tuple_(NOTIFICATIONS.c.id, NOTIFICATIONS.c.send_lease_token).in_(
                    [(s.notification_id, s.lease_token) for s in sent]
                )
            )
            .values(
                status="sent",
                attempts=NOTIFICATIONS.c.attempts + 1,
                sent_at=utcnow(),
                last_error=None,
                send_lease_until=None,
                send_lease_token=None,
                payload=scrubbed,
            )
        )
    if failures:
        connection.execute(
            _RECORD_FAILURE,
            [
                {
                    "failed_id": failure.notification_id,
                    "token": failure.lease_token,
                    "new_status": failure.status,
                    "error": failure.error[:MAX_ERROR_LENGTH],
                }
                for failure in failures
            ],
        )
    session.commit()
