"""The outbox relay: publishes what the requests could not, or were not meant to.

A queued request publishes its registration's `user.registered` event (a resend: its one job)
right after the commit. When that fails (broker down, publish over its time budget, process
killed between commit and publish) the event and its rows stay `pending`, and the request's hold
on the event runs out after a grace period. The relay then publishes the event and marks it
published and its rows queued. It also publishes the domain events nobody else does (serial and
parallel registrations' once their inline sends are recorded, verifications, notification
results), so they cost the request one INSERT and no broker round trip; a batch goes to
`offload.events` with its confirms in flight together. Pending rows not waiting on an event (a
resend, an inline send that failed) are published as jobs after the grace period. A batch that
fails is released at once and tried again on the next round, so what was written while the
broker was down goes out when it is back. The sweeper republishes rows left `queued` for longer
than RELAY_SWEEP_AFTER_SECONDS, whose message the broker lost (see `claim_stuck`).

Several relays may run at once. A claim is a lease written in one UPDATE: on PostgreSQL the
candidate rows are picked with `FOR UPDATE SKIP LOCKED`, on SQLite the single writer serializes
the UPDATEs; either way a row has one owner until its lease runs out, so in the normal case
nothing is published twice (and if it were, the consumers' ledger check still sends it once).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import gevent
from sqlalchemy import Select, Text, and_, cast, delete, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from app.db import database_now, session_scope, unindexed
from app.events import EVENTS, USER_REGISTERED, EventMessage
from app.jobs import job_from_dict
from app.ledger import mark_queued, send_lease_free
from app.messaging import Publisher, PublishError
from app.models import Event, Notification, WebhookDelivery
from services.metrics import EVENTS_PUBLISHED, RELAYED, SWEPT

log = logging.getLogger(__name__)

# Beyond the publishes themselves: the claim, the final mark, a pause of the process.
LEASE_MARGIN_SECONDS = 30.0
# Old events deleted per sweep, at most: this many batches of RELAY_BATCH_SIZE (each of events
# and of webhook deliveries).
MAX_FORGET_BATCHES = 50


def relay_lease_seconds(*, batch_size: int, publish_timeout: float) -> float:
    """How long a relay owns its batch: every row's publish may wait out its whole budget, one
    confirm at a time, so a fixed lease could run out mid-batch and let another relay publish
    the same rows."""
    return batch_size * publish_timeout + LEASE_MARGIN_SECONDS


def claim_pending(
    session: Session,
    *,
    relay_id: str,
    batch_size: int,
    grace_seconds: float,
    publish_timeout: float,
) -> list[Notification]:
    """Lease up to `batch_size` pending rows older than the grace period to this relay.

    A row whose registration event is still pending is left to that event: publishing the
    event delivers it (publish_events_once), and a job of its own would be a second message.
    """
    event_still_pending = (
        select(Event.id)
        .where(Event.id == Notification.event_id, Event.status == "pending")
        .exists()
    )
    return _claim(
        session,
        "pending",
        # created_at comes from the web host's clock: the grace absorbs a small skew.
        and_(Notification.created_at < database_now(-grace_seconds), ~event_still_pending),
        Notification.created_at,
        relay_id=relay_id,
        batch_size=batch_size,
        publish_timeout=publish_timeout,
    )


def claim_stuck(
    session: Session,
    *,
    relay_id: str,
    batch_size: int,
    stuck_seconds: float,
    publish_timeout: float,
) -> list[Notification]:
    """Lease up to `batch_size` rows left `queued` for longer than `stuck_seconds`.

    A queued row whose message the broker lost (a dead-lettering that did not arrive, a retry
    that could not be routed, a queue deleted by hand) would otherwise wait for ever: nothing
    else scans queued rows. `queued_at` is renewed at every hand-off to the broker (the first
    publish, every scheduled retry, every sweep), so a healthy row is older than this only
    when its queue holds a longer backlog; republishing it then costs a duplicate message,
    which the consumers' ledger check acknowledges without sending.
    """
    return _claim(
        session,
        "queued",
        Notification.queued_at < database_now(-stuck_seconds),
        Notification.queued_at,
        relay_id=relay_id,
        batch_size=batch_size,
        publish_timeout=publish_timeout,
    )


def _claim(
    session: Session,
    status: str,
    old_enough: ColumnElement[bool],
    oldest_first: Any,  # the column to order by
    *,
    relay_id: str,
    batch_size: int,
    publish_timeout: float,
) -> list[Notification]:
    lease_seconds = relay_lease_seconds(batch_size=batch_size, publish_timeout=publish_timeout)
    lease_free = (Notification.claimed_until.is_(None)) | (
        Notification.claimed_until < database_now()
    )
    candidates = (
        select(Notification.id)
        .where(
            Notification.status == status,
            old_enough,
            lease_free,
            # A send in progress (inline, or a consumer's) holds the row.
            send_lease_free(),
        )
        .order_by(oldest_first)
        .limit(batch_size)
    )
    if not _any_row(session, candidates):
        return []
    session.execute(
        update(Notification)
        .where(
            Notification.id.in_(candidates.with_for_update(skip_locked=True).scalar_subquery()),
            lease_free,
        )
        .values(claimed_by=relay_id, claimed_until=database_now(lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return list(
        session.scalars(
            select(Notification).where(
                Notification.claimed_by == relay_id,
                Notification.status == status,
                Notification.claimed_until > database_now(),
                old_enough,
            )
        )
    )


def _any_row(session: Session, candidates: Select[Any]) -> bool:
    """Whether `candidates` finds a row, read without a lock: most rounds find nothing to
    claim (nothing pending past the grace, nothing stuck), and on SQLite a claim's UPDATE takes
    the database's one write lock even when it changes no row, while the web's registrations
    wait for it. The read ends its transaction, so the claim that follows writes from a fresh
    snapshot."""
    found = session.execute(candidates.limit(1)).first() is not None
    session.rollback()
    return found


def _publish_each(
    publisher: Publisher, claimed: list[Notification], publish_timeout: float
) -> list[Notification]:
    published: list[Notification] = []
    for notification in claimed:
        try:
            publisher.publish([job_from_dict(notification.payload)], timeout=publish_timeout)
        except PublishError as exc:
            log.warning("relay: publish failed, will try again: %s", exc)
            break
        published.append(notification)
    return published


def sweep_once(
    sessions: sessionmaker[Session],
    publisher: Publisher,
    *,
    relay_id: str,
    batch_size: int,
    stuck_seconds: float,
    publish_timeout: float,
) -> int:
    """Republish one batch of rows stuck in `queued`; return how many were republished."""
    with session_scope(sessions) as session:
        claimed = claim_stuck(
            session,
            relay_id=relay_id,
            batch_size=batch_size,
            stuck_seconds=stuck_seconds,
            publish_timeout=publish_timeout,
        )
        swept = _publish_each(publisher, claimed, publish_timeout)
        if swept:
            session.execute(
                update(Notification)
                .where(
                    Notification.id.in_([n.id for n in swept]),
                    unindexed(Notification.status) == "queued",
                )
                .values(queued_at=database_now())
                .execution_options(synchronize_session=False)
            )
            session.commit()
            SWEPT.inc(len(swept))
            log.warning(
                "relay: republished %d notifications left queued for over %gs",
                len(swept),
                stuck_seconds,
            )
        return len(swept)


def forget_old_events(
    sessions: sessionmaker[Session], *, retention_seconds: float, batch_size: int
) -> int:
    """Delete one batch of published events older than the retention, and one of the webhook
    deliveries that ended (delivered or failed) that long ago; return how many rows went.

    Pending events stay whatever their age (they have not gone out yet), and so do deliveries
    still retrying. A batch at a time: on SQLite every DELETE holds the one write lock.
    """
    cutoff = database_now(-retention_seconds)
    old_events = (
        select(Event.id)
        .where(Event.status == "published", Event.created_at < cutoff)
        .limit(batch_size)
    )
    ended_deliveries = (
        select(WebhookDelivery.event_id)
        .where(
            WebhookDelivery.status.in_(("delivered", "failed")),
            WebhookDelivery.created_at < cutoff,
        )
        .limit(batch_size)
    )
    with session_scope(sessions) as session:
        connection = session.connection()
        events = connection.execute(
            delete(Event).where(Event.id.in_(old_events.scalar_subquery()))
        ).rowcount
        deliveries = connection.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.event_id.in_(ended_deliveries.scalar_subquery()),
                WebhookDelivery.status.in_(("delivered", "failed")),
            )
        ).rowcount
        session.commit()
    return events + deliveries


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
            session,
            relay_id=relay_id,
            batch_size=batch_size,
            grace_seconds=grace_seconds,
            publish_timeout=publish_timeout,
        )
        queued = _publish_each(publisher, claimed, publish_timeout)
        if queued:
            mark_queued(session, queued)
            RELAYED.inc(len(queued))
            log.info("relay: queued %d pending notifications", len(queued))
        return len(queued)


def claim_events(
    session: Session, *, relay_id: str, batch_size: int, lease_seconds: float
) -> list[EventMessage]:
    """Lease up to `batch_size` pending events to this relay; return them oldest first, as
    they go on the wire.

    A relay may take back its own leased rows (a batch it could not publish), never another's
    until their lease ran out. The claim's UPDATE returns each event's body as the text stored
    (the envelope's compact JSON, app/db.py `compact_json`), which is the message: nothing is
    loaded into the ORM, decoded or encoded again, at two events a queued registration.
    """
    # On the table, not the ORM class: nothing here is loaded into the session, and the ORM's
    # bulk UPDATE path made a claim of 30 cost 1.04-1.25 ms against 0.88-0.96 (in-process).
    claimable = (
        EVENTS.c.claimed_until.is_(None)
        | (EVENTS.c.claimed_until < database_now())
        | (EVENTS.c.claimed_by == relay_id)
    )
    candidates = (
        select(EVENTS.c.id)
        .where(EVENTS.c.status == "pending", claimable)
        .order_by(EVENTS.c.created_at)
        .limit(batch_size)
    )
    if not _any_row(session, candidates):
        return []
    claimed = session.execute(
        update(EVENTS)
        .where(
            EVENTS.c.id.in_(candidates.with_for_update(skip_locked=True).scalar_subquery()),
            claimable,
        )
        .values(claimed_by=relay_id, claimed_until=database_now(lease_seconds))
        .returning(EVENTS.c.created_at, EVENTS.c.id, EVENTS.c.type, cast(EVENTS.c.body, Text))
    ).all()
    session.commit()
    # RETURNING's order is the database's choice. Sorted as plain tuples: SQLAlchemy's rows
    # compare through a method call each time, 7% of the relay's CPU under load.
    rows = sorted((at, id_, type_, body) for at, id_, type_, body in claimed)
    return [EventMessage(id_, type_, body.encode()) for _at, id_, type_, body in rows]


def publish_events_once(
    sessions: sessionmaker[Session],
    publisher: Publisher,
    *,
    relay_id: str,
    batch_size: int,
    publish_timeout: float,
) -> int:
    """Publish one batch of pending events; return how many were published."""
    with session_scope(sessions) as session:
        claimed = claim_events(
            session,
            relay_id=relay_id,
            batch_size=batch_size,
            # One wait covers the whole batch (its confirms are pipelined).
            lease_seconds=publish_timeout + LEASE_MARGIN_SECONDS,
        )
        if not claimed:
            return 0
        try:
            unrouted = publisher.publish_events(claimed, timeout=publish_timeout)
        except PublishError as exc:
            log.warning("relay: publishing %d events failed, will try again: %s", len(claimed), exc)
            return 0
        session.execute(
            update(Event)
            .where(Event.id.in_([e.id for e in claimed]), unindexed(Event.status) == "pending")
            .values(status="published", published_at=database_now(), claimed_until=None)
            .execution_options(synchronize_session=False)
        )
        # A registration's event reached the email and SMS queues: its rows are queued (if
        # the broker lost it, the sweeper finds them there). No other event has rows waiting.
        registrations = [e.id for e in claimed if e.type == USER_REGISTERED]
        if registrations:
            session.execute(
                update(Notification)
                .where(
                    Notification.event_id.in_(registrations),
                    unindexed(Notification.status) == "pending",
                )
                .values(status="queued", queued_at=database_now())
                .execution_options(synchronize_session=False)
            )
        session.commit()
        EVENTS_PUBLISHED.labels("no").inc(unrouted)
        EVENTS_PUBLISHED.labels("yes").inc(len(claimed) - unrouted)
        log.info("relay: published %d events", len(claimed))
        return len(claimed)


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
        sweep_after_seconds: float = 900.0,
        event_retention_seconds: float = 30 * 86400.0,
    ) -> None:
        self.sessions = sessions
        self.event_retention_seconds = event_retention_seconds
        self.sweep_after_seconds = sweep_after_seconds
        self._next_sweep = 0.0
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
            # Events first: a registration's event delivers its rows, which the next step
            # would otherwise publish again as jobs of their own.
            try:
                events = publish_events_once(
                    self.sessions,
                    self.publisher,
                    relay_id=self.relay_id,
                    batch_size=self.batch_size,
                    publish_timeout=self.publish_timeout,
                )
            except Exception:
                log.exception("relay: event batch failed")
                events = 0
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
            count = max(count, events)
            if time.monotonic() >= self._next_sweep:
                self._sweep()
            # A full batch means more may be waiting: go again at once.
            if count < self.batch_size:
                gevent.sleep(self.interval)
        self.publisher.close()

    def _sweep(self) -> None:
        # Stuck rows are rare: a look every fifth of the bound finds them soon enough.
        self._next_sweep = time.monotonic() + self.sweep_after_seconds / 5
        try:
            sweep_once(
                self.sessions,
                self.publisher,
                relay_id=self.relay_id,
                batch_size=self.batch_size,
                stuck_seconds=self.sweep_after_seconds,
                publish_timeout=self.publish_timeout,
            )
        except Exception:
            log.exception("relay: sweep failed")
        try:
            forgotten = 0
            # Bounded, so a first sweep over a long history cannot hold the relay for long.
            for _ in range(MAX_FORGET_BATCHES):
                deleted = forget_old_events(
                    self.sessions,
                    retention_seconds=self.event_retention_seconds,
                    batch_size=self.batch_size,
                )
                forgotten += deleted
                if deleted == 0:
                    break
                gevent.sleep(0)
            if forgotten:
                log.info(
                    "relay: deleted %d events and webhook deliveries past retention", forgotten
                )
        except Exception:
            log.exception("relay: deleting old events failed")
