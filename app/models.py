"""The two tables: users, and notifications (the outbox and the send ledger in one).

A notification row is written in the same transaction as its user. Its status tells the whole
story of the job:

    pending  written; not yet confirmed by the broker (the relay publishes these once they are
             older than RELAY_GRACE_SECONDS)
    queued   confirmed by the broker, waiting for a consumer
    sent     the SMTP server or SMS gateway accepted it (consumers skip these on redelivery)
    failed   gave up: permanent error, or attempts exhausted (the job sits in the parking queue)
    skipped  never meant to be sent: the benchmark's insert-only baseline (BENCH_MODES=true)
    held     an SMS over a budget (app/smsbudget.py): kept, sent once an operator releases it
             (`python -m services.held release` makes it pending again)
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, UTCDateTime

NOTIFICATION_STATUSES = ("pending", "queued", "sent", "failed", "skipped", "held")
CHANNELS = ("email", "sms")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """A row id: a UUID version 7 (RFC 9562) as 32 hex digits, ordered by the millisecond it
    was made in, then random (74 bits).

    Time-ordered so that a new row lands at the end of every index keyed by an id (each table's
    key; the notifications' user and event ids): with random ids each INSERT wrote to a random
    leaf page of each of them, and once a table outgrew SQLite's page cache, read it back
    first. A registration's write cost 372 us at 96,000 users against 156 with these
    (tests/unit/test_row_ids.py). Python 3.14's `uuid.uuid7` makes the same layout.
    """
    milliseconds = time.time_ns() // 1_000_000
    random_bits = int.from_bytes(os.urandom(10)) >> 6  # 74
    rand_a, rand_b = divmod(random_bits, 1 << 62)  # 12 bits and 62
    value = (milliseconds & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return f"{value:032x}"


def random_id() -> str:
    """An id that tells nothing, not even when it was made: for the one in the email link's
    token, which is signed, not encrypted."""
    return uuid.uuid4().hex


def email_key(email: str) -> str:
    """The address as uniqueness sees it: `Ada@x.org` and `ada@x.org` are one address.

    Strictly, only the domain is case-insensitive; in practice no mail system gives `Ada` and
    `ada` to two people, and treating them as two lets one person hold two accounts (or squat
    another's address by its capitals).
    """
    return email.casefold()


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    # Not unique on its own: email_key's index decides (migration 0009).
    email: Mapped[str] = mapped_column(String(320))
    # email_key(email): the unique index that decides "already registered" whatever the case.
    email_key: Mapped[str] = mapped_column(String(320), index=True, unique=True)
    phone: Mapped[str] = mapped_column(String(20), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    phone_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The SMS code is stored as a keyed hash, never in clear.
    sms_code_hash: Mapped[str | None] = mapped_column(String(128))
    sms_code_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sms_code_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Resends so far (both channels) and when the last was asked for (app/resend.py).
    resends: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_resend_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The status token (app/verification.py) opens the user's status; only its SHA-256 is kept.
    # The id is never a credential: it opens nothing and appears in no link.
    status_token_hash: Mapped[str | None] = mapped_column(String(64), index=True, unique=True)
    # Random, named by the email link's token instead of the id (signed, not encrypted).
    email_verification_id: Mapped[str | None] = mapped_column(String(32), index=True, unique=True)

    notifications: Mapped[list[Notification]] = relationship(
        back_populates="user", order_by="Notification.channel", lazy="selectin"
    )

    @property
    def verified(self) -> bool:
        return self.email_verified_at is not None and self.phone_verified_at is not None


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (Index(None, "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10), default="pending")
    # The job as it goes on the wire; kept so the relay can publish it again.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Relay lease: the relay that claimed a row owns it until `claimed_until`.
    claimed_by: Mapped[str | None] = mapped_column(String(32))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Send lease: a consumer about to send owns the row until this time, so two copies of one
    # job (a relay republish racing a late confirm) never go out at once.
    send_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Who holds the send lease: written by the claim, checked by the record, so a holder whose
    # lease ran out (and was taken over) can no longer change the row.
    send_lease_token: Mapped[str | None] = mapped_column(String(32))
    # The domain event whose subscribers send this row: a registration's `user.registered`,
    # which the email and SMS consumers receive and look their own row up by. None for a
    # resend (published as a job of its own) and for rows older than the events.
    event_id: Mapped[str | None] = mapped_column(String(32), index=True)

    user: Mapped[User] = relationship(back_populates="notifications")


class RateLimitCounter(Base):
    """One client's hits in one fixed window (see app/ratelimit.py).

    Kept in the database, not in process memory, so every gunicorn worker and every web
    process counts against the same limit.
    """

    __tablename__ = "rate_limit_counters"

    # "<limit name>:<client address>", e.g. "registrations:203.0.113.7"
    bucket: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    # When the window closes; the clean-up deletes rows whose window has closed.
    window_end: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    hits: Mapped[int] = mapped_column(Integer)


EVENT_STATUSES = ("pending", "published")


class Event(Base):
    """A domain event in the outbox (app/events.py): written in the transaction of the change
    it reports, published by the relay to the `offload.events` topic exchange.

        pending    written; the relay has not had the broker's confirm yet
        published  confirmed by the broker (routed to every queue bound to its type, or to
                   none when nobody subscribes: that is a topic's normal case)
    """

    __tablename__ = "events"
    __table_args__ = (Index(None, "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # The routing key: user.registered, user.email_verified, notification.sent, ...
    type: Mapped[str] = mapped_column(String(64))
    # The v1 envelope exactly as it goes on the wire (app.events.envelope).
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Relay lease, as on notifications: one relay owns a row until `claimed_until`.
    claimed_by: Mapped[str | None] = mapped_column(String(32))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


WEBHOOK_STATUSES = ("retrying", "delivered", "failed")


class WebhookDelivery(Base):
    """The webhook ledger: one row per (event, endpoint), so a redelivered event is not POSTed
    to the same endpoint twice (services/webhooks.py).

        retrying   at least one attempt failed; a retry waits in the endpoint's retry queue
        delivered  the endpoint answered 2xx (redeliveries are acked without a POST)
        failed     a permanent refusal (4xx), or attempts exhausted: parked
    A row is written by the first claim of its event, with no status until the first result.
    """

    __tablename__ = "webhook_deliveries"

    event_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The endpoint's stable name (app.events.webhook_name(url)), not the URL, which may hold
    # credentials.
    endpoint: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str | None] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Send lease, as on notifications: one consumer POSTs an event to an endpoint at a time.
    send_lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    send_lease_token: Mapped[str | None] = mapped_column(String(32))
