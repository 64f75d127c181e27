"""The notification ledger: every change of a notification's status goes through here.

Used by the request path (serial and parallel modes send inline; queued mode marks rows queued)
and by the consumers, so every mode leaves the same trace. Each function commits.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.models import Notification, utcnow

MAX_ERROR_LENGTH = 1000


def mark_queued(session: Session, notification_ids: Sequence[str]) -> None:
    # Only pending rows: a fast consumer may already have marked the row sent.
    session.execute(
        update(Notification)
        .where(Notification.id.in_(notification_ids), Notification.status == "pending")
        .values(status="queued", queued_at=utcnow())
    )
    session.commit()


def mark_skipped(session: Session, notification_ids: Sequence[str]) -> None:
    # Same shape of work as mark_queued (one UPDATE, one commit), so the baseline is fair.
    session.execute(
        update(Notification)
        .where(Notification.id.in_(notification_ids), Notification.status == "pending")
        .values(status="skipped", last_error="benchmark baseline: not sent")
    )
    session.commit()


def mark_sent(session: Session, notification: Notification) -> None:
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
    session.commit()
