"""The outbox relay: publishes the notifications that their request could not.

A request publishes its own jobs right after the commit; when that fails (broker down, publish
over its time budget, process killed between commit and publish) the rows stay `pending`. The
relay claims pending rows older than a grace period, publishes them with confirms, and marks them
queued.

Several relays may run at once. A claim is a lease written in one UPDATE: on PostgreSQL the
candidate rows are picked with `FOR UPDATE SKIP LOCKED`, on SQLite the single writer serializes
the UPDATEs; either way a row has one owner until its lease runs out, so in the normal case
nothing is published twice (and if it were, the consumers' ledger check still sends it once).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import gevent
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.jobs import job_from_dict
from app.ledger import mark_queued
from app.messaging import Publisher, PublishError
from app.models import Notification, utcnow
from services.metrics import RELAYED

log = logging.getLogger(__name__)

LEASE_SECONDS = 30


def claim_pending(
    session: Session, *, relay_id: str, batch_size: int, grace_seconds: float
) -> list[Notification]:
    now = utcnow()
    lease_free = (Notification.claimed_until.is_(None)) | (Notification.claimed_until < now)
    candidates = (
        select(Notification.id)
        .where(
            Notification.status == "pending",
            Notification.created_at < now - timedelta(seconds=grace_seconds),
            lease_free,
        )
        .order_by(Notification.created_at)
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    session.execute(
        update(Notification)
        .where(Notification.id.in_(candidates.scalar_subquery()), lease_free)
        .values(claimed_by=relay_id, claimed_until=now + timedelta(seconds=LEASE_SECONDS))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return list(
        session.scalars(
            select(Notification).where(
                Notification.claimed_by == relay_id,
                Notification.status == "pending",
                Notification.claimed_until > now,
            )
        )
    )


def relay_once(
    sessions: sessionmaker[Session],
    publisher: Publisher,
    *,
    relay_id: str,
    batch_size: int,
    grace_seconds: float,
    publish_timeout: float,
) -> int:
    """Publish one batch of pending notifications; return how many were queued."""
    with session_scope(sessions) as session:
        claimed = claim_pending(
            session, relay_id=relay_id, batch_size=batch_size, grace_seconds=grace_seconds
        )
        queued: list[Notification] = []
        for notification in claimed:
            try:
                publisher.publish([job_from_dict(notification.payload)], timeout=publish_timeout)
            except PublishError as exc:
                log.warning("relay: publish failed, will try again: %s", exc)
                break
            queued.append(notification)
        if queued:
            mark_queued(session, queued)
            RELAYED.inc(len(queued))
            log.info("relay: queued %d pending notifications", len(queued))
        return len(queued)


class Relay:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        publisher: Publisher,
        *,
        interval: float,
        batch_size: int,
        grace_seconds: float,
        publish_timeout: float,
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.interval = interval
        self.batch_size = batch_size
        self.grace_seconds = grace_seconds
        self.publish_timeout = publish_timeout
        self.relay_id = uuid.uuid4().hex
        self._stopping = False

    def request_stop(self) -> None:
        self._stopping = True

    def run(self) -> None:
        while not self._stopping:
            try:
                count = relay_once(
                    self.sessions,
                    self.publisher,
                    relay_id=self.relay_id,
                    batch_size=self.batch_size,
                    grace_seconds=self.grace_seconds,
                    publish_timeout=self.publish_timeout,
                )
            except Exception:
                log.exception("relay: batch failed")
                count = 0
            # A full batch means more may be waiting: go again at once.
            if count < self.batch_size:
                gevent.sleep(self.interval)
        self.publisher.close()
