"""The notification ledger: every change of a notification's status goes through here.

Used by the request path (serial and parallel modes send inline; queued mode marks rows queued)
and by the consumers, so every mode leaves the same trace. Each function commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.models import Notification, utcnow

MAX_ERROR_LENGTH = 1000


def mark_queued(session: Session, notifications: Sequence[Notification]) -> None:
    # Only pending rows: a fast consumer may already have marked the row sent.
    now = utcnow()
    session.execute(
        update(Notification)
        .where(
            Notification.id.in_([n.id for n in notifications]),
            Notification.status == "pending",
        )
        .values(status="queued", queued_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    # Tell the loaded objects, without a SELECT per row (this is on the request's path).
    for notification in notifications:
        if notification.status == "pending":
            set_committed_value(notification, "status", "queued")
            set_committed_value(notification, "queued_at", now)


def mark_skipped(session: Session, notifications: Sequence[Notification]) -> None:
    # Same shape of work as mark_queued (one UPDATE, one commit), so the baseline is fair.
    session.execute(
        update(Notification)
        .where(
            Notification.id.in_([n.id for n in notifications]),
            Notification.status == "pending",
        )
        .values(status="skipped", last_error="benchmark baseline: not sent")
        .execution_options(synchronize_session=False)
    )
    session.commit()
    for notification in notifications:
        set_committed_value(notification, "status", "skipped")
        set_committed_value(notification, "last_error", "benchmark baseline: not sent")


def take_send_lease(session: Session, notification: Notification, seconds: float) -> bool:
    """Claim the right to send this notification now; False if another consumer holds it."""
    now = utcnow()
    until = now + timedelta(seconds=seconds)
    result = session.execute(
        update(Notification)
        .where(
            Notification.id == notification.id,
            Notification.status != "sent",
            or_(Notification.send_lease_until.is_(None), Notification.send_lease_until < now),
        )
        .values(send_lease_until=until)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if getattr(result, "rowcount", 0) != 1:
        return False
    # Tell the loaded object what the UPDATE wrote, so clearing the lease later is a change.
    set_committed_value(notification, "send_lease_until", until)
    return True


def mark_sent(session: Session, notification: Notification) -> None:
    notification.send_lease_until = None
    notification.status = "sent"
    notification.attempts += 1
    notification.sent_at = utcnow()
    notification.last_error = None
    session.commit()


def mark_attempt_failed(
    session: Session, notification: Notification, error: str, *, status: str
) -> None:
    """Record a failed attempt and the status it leaves the row in.

    `failed`: no retry follows. `queued`: a retry is scheduled through the broker. `pending`:
    the outbox relay will publish it (an inline send in serial or parallel mode that failed for
    a reason worth retrying).
    """
    notification.attempts += 1
    notification.last_error = error[:MAX_ERROR_LENGTH]
    notification.status = status
    notification.send_lease_until = None
    session.commit()
