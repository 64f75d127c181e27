"""The notification ledger: every change of a notification's status goes through here.

Used by the request path (serial and parallel modes send inline; queued mode marks rows queued)
and by the consumers, so every mode leaves the same trace. Each function commits. A row recorded
sent keeps its job without the secret it carried (the SMS code, the email's link token).
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import gevent
import gevent.event
from sqlalchemy import Table, Update, bindparam, case, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import ColumnElement

from app.db import (
    OffLoopWriter,
    SqliteStatement,
    database_now,
    json_with_string,
    session_scope,
    sqlite_file,
    unindexed,
)
from app.events import EVENTS, REQUEST_HOLDER, notification_event
from app.jobs import SCRUBBED_TEXT, SECRET_FIELD, scrubbed_payload
from app.models import Notification, utcnow

log = logging.getLogger(__name__)

# The consumers' batch statements go through SQLAlchemy Core on the table: the ORM's bulk-UPDATE
# path adds more CPU than the statement itself, and these run for every job.
NOTIFICATIONS = cast(Table, Notification.__table__)

MAX_ERROR_LENGTH = 1000


# Built once, with the ids as one expanding parameter (the ORM's bulk UPDATE was built per call).
# Only pending rows: a fast consumer may already have marked the row sent. The status filters
# the rows found by their key (`unindexed`): SQLite used to read them through the status index,
# every pending row of the ledger for each batch (2.0 ms for a batch of 13 registrations among
# 2,600 pending, 0.7 ms by their key).
def _mark_queued(listed: ColumnElement[bool]) -> Update:
    return (
        update(NOTIFICATIONS)
        .where(listed, unindexed(NOTIFICATIONS.c.status) == "pending")
        .values(status="queued", queued_at=database_now())
    )


def _mark_published(listed: ColumnElement[bool]) -> Update:
    # The request published these events: they keep its `claimed_by`.
    return (
        update(EVENTS)
        .where(listed, unindexed(EVENTS.c.status) == "pending")
        .values(status="published", published_at=database_now(), claimed_until=None)
    )


def _listed_in_json(column: ColumnElement[str]) -> ColumnElement[bool]:
    """`column` is one of the JSON array `ids`: one parameter whatever the number of ids, so
    the statement is compiled once (an expanding IN is rendered anew for each length)."""
    return column.in_(select(func.json_each(bindparam("ids")).table_valued("value").c.value))


_MARK_QUEUED = _mark_queued(NOTIFICATIONS.c.id.in_(bindparam("ids", expanding=True)))
_MARK_PUBLISHED = _mark_published(EVENTS.c.id.in_(bindparam("ids", expanding=True)))
# The same, for the web's off-loop writer on SQLite (QueuedMarker).
_MARK_QUEUED_SQLITE = SqliteStatement.compile(
    _mark_queued(_listed_in_json(NOTIFICATIONS.c.id)), ids="[]"
)
_MARK_PUBLISHED_SQLITE = SqliteStatement.compile(
    _mark_published(_listed_in_json(EVENTS.c.id)), ids="[]"
)


def mark_queued(session: Session, notifications: Sequence[Notification]) -> None:
    """Mark rows the broker confirmed as queued, in one UPDATE (the relay's batches)."""
    _mark_queued_ids(session, [n.id for n in notifications])
    session.commit()
    for notification in notifications:
        if notification.status == "pending":
            set_committed_value(notification, "status", "queued")


def _mark_queued_ids(session: Session, notification_ids: Sequence[str]) -> None:
    session.connection().execute(_MARK_QUEUED, {"ids": list(notification_ids)})


def mark_confirmed(
    session: Session, notification_ids: Sequence[str], event_ids: Sequence[str]
) -> None:
    """The broker confirmed these registrations' events: the events are published (the
    request published them, so they keep the request's `claimed_by`) and their rows queued,
    in one transaction."""
    if notification_ids:
        _mark_queued_ids(session, notification_ids)
    if event_ids:
        session.connection().execute(_MARK_PUBLISHED, {"ids": list(event_ids)})
    session.commit()


class QueuedMarker:
    """Marks what the broker confirmed, in batches, off the request's path.

    The broker's confirm of a registration's event arrives (in a callback on the hub) after the
    response has gone; the event stays `pending` and its rows `pending` for up to `interval`
    seconds more, then one transaction marks every event published and every row queued that
    was confirmed meanwhile. That costs one small transaction per batch instead of one per
    registration. Nothing depends on the mark but the relay, which leaves the event alone while
    the request's lease on it lasts (RELAY_GRACE_SECONDS): a mark lost with its process only
    means the relay publishes that event again, and the consumers' ledger check keeps that from
    sending anything twice. With `interval` 0 the marks are written at once, in the caller's
    greenlet.

    On a SQLite file the batches are written by an OffLoopWriter (app/db.py). On the event
    loop's thread they took 5% of the web's samples in queued mode at 50 clients (py-spy), the
    largest part of what a queued registration costs the web beyond an insert-only one, on the
    thread every request waits for. Off it, in three pairs of 12-s runs on a fresh stack, the
    loop's thread spent 1.12x insert-only's CPU per queued request against 1.13x, and queued
    served 0.81x insert-only's requests a second against 0.78x: less than the profile's share,
    since each hand-over of the GIL to the writing thread costs the loop a switch.
    """

    def __init__(
        self, sessions: sessionmaker[Session], *, interval: float, busy_timeout: float = 5.0
    ) -> None:
        self.sessions = sessions
        self.interval = interval
        self._ids: list[str] = []
        self._event_ids: list[str] = []
        self._flusher: gevent.Greenlet[[], None] | None = None
        bind = sessions.kw.get("bind")
        database = sqlite_file(bind.url) if interval > 0 and bind is not None else None
        self._writer = OffLoopWriter(database, busy_timeout=busy_timeout) if database else None
        self._writing: gevent.event.AsyncResult | None = None

    def mark(self, notifications: Sequence[Notification], event_ids: Sequence[str] = ()) -> None:
        for notification in notifications:
            notification.status = "queued"  # what the response shows; the row follows
        self._ids.extend(n.id for n in notifications)
        self._event_ids.extend(event_ids)
        if self.interval <= 0 and gevent.getcurrent() is not gevent.get_hub():
            self.flush()
        else:
            # A confirm arrives in a callback on the hub, which must not wait for the database.
            self._flush_later()

    def _flush_later(self) -> None:
        if self._flusher is None:
            self._flusher = gevent.spawn_later(self.interval, self.flush)

    def flush(self) -> None:
        self._flusher = None
        if self._writing is not None and not self._writing.ready():
            # One batch at a time: a write waiting for SQLite's lock must not be joined by one
            # more every interval, each holding a thread of the pool the lock waits use too.
            # The next batch goes when this one is written (`_written`).
            return
        ids, self._ids = self._ids, []
        event_ids, self._event_ids = self._event_ids, []
        if not ids and not event_ids:
            return
        if self._writer is not None:
            self._writing = self._writer.write(
                [
                    (_MARK_QUEUED_SQLITE, {"ids": json.dumps(ids)}),
                    (_MARK_PUBLISHED_SQLITE, {"ids": json.dumps(event_ids)}),
                ]
            )
            self._writing.rawlink(functools.partial(self._written, len(event_ids)))
            return
        try:
            with session_scope(self.sessions) as session:
                mark_confirmed(session, ids, event_ids)
        except SQLAlchemyError as exc:
            self._report_failure(len(event_ids), exc)

    def _written(self, events: int, written: gevent.event.AsyncResult) -> None:
        if not written.successful():
            self._report_failure(events, written.exception)
        if self._ids or self._event_ids:
            self._flush_later()

    @staticmethod
    def _report_failure(events: int, exc: BaseException | None) -> None:
        log.warning(
            "could not mark %d confirmed events published (the relay will publish them again): %s",
            events,
            exc,
        )

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.kill(block=False)
            self._flusher = None
        if self._writing is not None:
            self._writing.wait(CLOSE_WAIT_SECONDS)  # the batch under way, then the rest
        self.flush()
        if self._writing is not None:
            self._writing.wait(CLOSE_WAIT_SECONDS)


# How long closing waits for the last batch of marks being written off the loop.
CLOSE_WAIT_SECONDS = 5.0


def new_lease_token() -> str:
    return uuid.uuid4().hex


def record_inline_sends(
    session: Session, outcomes: Sequence[InlineOutcome], *, release_event: str | None = None
) -> None:
    """Record the request's own sends (serial and parallel modes) in one transaction.

    The rows were written holding a send lease (app/registration.py); each UPDATE is
    conditional on its token, like the consumers' record. `release_event` is the
    registration's event, written held by the request: released here, in the same
    transaction, the relay publishes it next, and the channel consumers it reaches find the
    rows already recorded.
    """
    connection = session.connection()
    now = utcnow()
    sent = [outcome.notification for outcome in outcomes if outcome.error is None]
    changed: set[str] = set()
    if sent:
        # One UPDATE for the sent rows, the consumers' own (`record_sends`): it takes the
        # secrets out of the payloads in SQL.
        changed.update(
            connection.execute(
                _RECORD_SENT_BATCH,
                {
                    "sent_ids": [notification.id for notification in sent],
                    "tokens": list({notification.send_lease_token for notification in sent}),
                    "sent_at": now,
                },
            ).scalars()
        )
    events: list[dict[str, object]] = []
    for outcome in outcomes:
        notification = outcome.notification
        values: dict[str, object]
        if outcome.error is None:
            values = {
                "status": "sent",
                "sent_at": now,
                "last_error": None,
                "payload": scrubbed_payload(notification.channel, notification.payload),
            }
        else:
            values = {
                "status": outcome.retry_status,
                "last_error": outcome.error[:MAX_ERROR_LENGTH],
                "sent_at": None,
            }
            if connection.execute(
                _RECORD_INLINE_FAILURE,
                {
                    "failed_id": notification.id,
                    "token": notification.send_lease_token,
                    "new_status": outcome.retry_status,
                    "error": values["last_error"],
                },
            ).first():
                changed.add(notification.id)
        status = values["status"]
        if notification.id in changed and status in ("sent", "failed"):
            events.append(notification_event(notification.id, notification.channel, status, now))
        # The rows are the request's own, outside the session: what the response shows.
        for name, value in values.items():
            setattr(notification, name, value)
        notification.attempts = (notification.attempts or 0) + 1
    if events:
        connection.execute(_INSERT_EVENTS, events)
    if release_event is not None:
        connection.execute(_RELEASE_HELD_EVENT, {"event_id": release_event})
    session.commit()


# What every record of a leased send sets, whatever its outcome: the attempt counted, the lease
# given back.
_END_OF_LEASE = {
    "attempts": NOTIFICATIONS.c.attempts + 1,
    "send_lease_until": None,
    "send_lease_token": None,
}


def _record_of_leased_row(id_param: str) -> Update:
    """The UPDATE recording one send: it changes the row only while the row still carries the
    token its lease was taken with (a sender whose lease was taken over changes nothing), and
    ends the lease. The caller adds what the outcome sets."""
    return (
        update(NOTIFICATIONS)
        .where(
            NOTIFICATIONS.c.id == bindparam(id_param),
            NOTIFICATIONS.c.send_lease_token == bindparam("token"),
        )
        .values(**_END_OF_LEASE)
    )


# Built once, like the registration's INSERTs: a statement's construction and cache key cost
# more CPU than its execution, and these run on every serial and parallel request. A failed
# inline send keeps its payload (the relay sends it again) and is not queued yet, unlike the
# consumers' `_RECORD_FAILURE`.
_RECORD_INLINE_FAILURE = (
    _record_of_leased_row("failed_id")
    .values(status=bindparam("new_status"), last_error=bindparam("error"), sent_at=None)
    .returning(NOTIFICATIONS.c.id)
)
_INSERT_EVENTS = insert(EVENTS)
_RELEASE_HELD_EVENT = (
    update(EVENTS)
    .where(EVENTS.c.id == bindparam("event_id"), EVENTS.c.claimed_by == REQUEST_HOLDER)
    .values(claimed_by=None, claimed_until=None)
)


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
        _TAKE_SEND_LEASES,
        {"ids": list(notification_ids), "lease_seconds": seconds, "token": token},
    )
    return {notification_id: attempts for notification_id, attempts in rows}


# What a claim's lease sets: until when, by the database's clock, and whose it is.
_LEASE = {
    "send_lease_until": database_now(bindparam("lease_seconds")),
    "send_lease_token": bindparam("token"),
}
# The claims are built once, like the marks above: they run for every batch a consumer takes,
# one job at a time under a light load, when building and keying the statement cost more than
# running it.
_TAKE_SEND_LEASES = (
    update(NOTIFICATIONS)
    .where(
        NOTIFICATIONS.c.id.in_(bindparam("ids", expanding=True)),
        NOTIFICATIONS.c.status != "sent",
        send_lease_free(),
    )
    .values(**_LEASE)
    .returning(NOTIFICATIONS.c.id, NOTIFICATIONS.c.attempts)
)


# The rows an event's arrival may send: never one a request is sending or sent inline (its
# lease or `sent`), nor one held, skipped or given up on (those wait for a job of their own).
EVENT_SENDABLE = ("pending", "queued")


@dataclass(frozen=True)
class EventLease:
    """The row of one channel that a `user.registered` event names, leased for sending."""

    notification_id: str
    attempts: int
    payload: dict[str, object]


def take_event_send_leases(
    session: Session, event_ids: Sequence[str], channel: str, seconds: float, token: str
) -> dict[str, EventLease]:
    """Lease, in one UPDATE, this channel's sendable row of each of these events;
    {event id: lease} of those leased. The caller commits.

    The same conditions as `take_send_leases`, and only rows still pending or queued.
    RETURNING brings the job back from the outbox row: the event names no recipient and
    carries no secret.
    """
    rows = session.connection().execute(
        _TAKE_EVENT_SEND_LEASES,
        {"ids": list(event_ids), "of_channel": channel, "lease_seconds": seconds, "token": token},
    )
    return {
        event_id: EventLease(notification_id, attempts, payload)
        for event_id, notification_id, attempts, payload in rows
    }


_TAKE_EVENT_SEND_LEASES = (
    update(NOTIFICATIONS)
    .where(
        NOTIFICATIONS.c.event_id.in_(bindparam("ids", expanding=True)),
        NOTIFICATIONS.c.channel == bindparam("of_channel"),
        # A filter of the rows the event index finds: through the status index, a batch of
        # three or more read every row not yet sent, the whole backlog.
        unindexed(NOTIFICATIONS.c.status).in_(EVENT_SENDABLE),
        send_lease_free(),
    )
    .values(**_LEASE)
    .returning(
        NOTIFICATIONS.c.event_id,
        NOTIFICATIONS.c.id,
        NOTIFICATIONS.c.attempts,
        NOTIFICATIONS.c.payload,
    )
)


def event_notification_statuses(
    session: Session, event_ids: Sequence[str], channel: str
) -> dict[str, str]:
    """{event id: status} of this channel's row of each event that has one."""
    rows = session.execute(
        select(Notification.event_id, Notification.status).where(
            Notification.event_id.in_(event_ids), Notification.channel == channel
        )
    )
    return {event_id: status for event_id, status in rows if event_id is not None}


def notification_statuses(session: Session, notification_ids: Sequence[str]) -> dict[str, str]:
    rows = session.execute(
        select(Notification.id, Notification.status).where(Notification.id.in_(notification_ids))
    )
    return {notification_id: status for notification_id, status in rows}


@dataclass(frozen=True)
class Sent:
    notification_id: str
    lease_token: str
    channel: str  # "email" or "sms": named by the notification.sent event


@dataclass(frozen=True)
class Failure:
    notification_id: str
    error: str
    # "failed": no retry follows. "queued": a retry is scheduled through the broker.
    status: str
    lease_token: str = ""
    channel: str = ""  # "email" or "sms": named by the notification.failed event


_RECORD_FAILURE = _record_of_leased_row("failed_id").values(
    status=bindparam("new_status"),
    last_error=bindparam("error"),
    # A retry is a new hand-off to the broker: the sweeper counts from here.
    queued_at=database_now(),
)


def record_sends(session: Session, sent: Sequence[Sent], failures: Sequence[Failure]) -> None:
    """Record the results of a batch of sends in one transaction, and commit.

    Every UPDATE is conditional on the lease token the claim wrote: a sender whose lease ran
    out and was taken over by another consumer changes nothing (its message comes back later
    and the ledger decides again).

    On SQLite the transaction holds the database's one write lock from its first UPDATE to its
    commit, and every other writer (the web's registrations first) waits meanwhile: so all
    that can be is prepared before the first write, and the sent rows are recorded by one
    UPDATE for the batch, which also takes each payload's secret out in SQL. One prebuilt
    UPDATE per row held the lock about 70 us a row (2 ms for 30 sends).
    """
    connection = session.connection()
    now = utcnow()
    # Each sent row's event, by id: a row sent twice in one batch (its lease taken over and
    # back) changes once.
    sent_events = {
        record.notification_id: notification_event(
            record.notification_id, record.channel, "sent", now
        )
        for record in sent
    }
    retries = [_failure_params(failure) for failure in failures if failure.status != "failed"]
    given_up = [failure for failure in failures if failure.status == "failed"]
    events: list[dict[str, object]] = []
    if sent_events:
        # RETURNING says which rows this record changed: only those get their event, not rows
        # whose lease was taken over. The lease tokens are the claims' (one per claim batch,
        # unknown to any other consumer), so matching any of them is matching each row's own.
        changed = (
            connection.execute(
                _RECORD_SENT_BATCH,
                {
                    "sent_ids": list(sent_events),
                    "tokens": list({record.lease_token for record in sent}),
                    "sent_at": now,
                },
            )
            .scalars()
            .all()
        )
        events.extend(sent_events[row_id] for row_id in changed)
    if retries:
        connection.execute(_RECORD_FAILURE, retries)
    for failure in given_up:
        # One statement each: giving up is rare, and RETURNING tells whether this record
        # changed the row (an executemany cannot).
        if connection.execute(
            _RECORD_FAILURE.returning(NOTIFICATIONS.c.id), _failure_params(failure)
        ).first():
            events.append(
                notification_event(failure.notification_id, failure.channel, "failed", now)
            )
    if events:
        # One INSERT for the batch's events, in the batch's one transaction.
        connection.execute(_INSERT_EVENTS, events)
    session.commit()


# A sent row's payload without its secret (app.jobs.scrubbed_payload, in SQL): the text field of its
# channel's kind of job replaced.
_SCRUBBED_PAYLOAD = case(
    *(
        (
            NOTIFICATIONS.c.channel == channel,
            json_with_string(NOTIFICATIONS.c.payload, field, SCRUBBED_TEXT),
        )
        for channel, field in SECRET_FIELD.items()
    ),
    else_=NOTIFICATIONS.c.payload,
)
# A batch of sent rows, each still leased with one of the batch's claim tokens.
_RECORD_SENT_BATCH = (
    update(NOTIFICATIONS)
    .where(
        NOTIFICATIONS.c.id.in_(bindparam("sent_ids", expanding=True)),
        NOTIFICATIONS.c.send_lease_token.in_(bindparam("tokens", expanding=True)),
    )
    .values(
        status="sent",
        sent_at=bindparam("sent_at", type_=NOTIFICATIONS.c.sent_at.type),
        last_error=None,
        payload=_SCRUBBED_PAYLOAD,
        **_END_OF_LEASE,
    )
    .returning(NOTIFICATIONS.c.id)
)


def _failure_params(failure: Failure) -> dict[str, object]:
    return {
        "failed_id": failure.notification_id,
        "token": failure.lease_token,
        "new_status": failure.status,
        "error": failure.error[:MAX_ERROR_LENGTH],
    }
