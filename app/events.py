"""Domain events: what happened, for whoever subscribes (webhooks, anything an operator binds).

An event is a row of the `events` outbox written in the same transaction as the change it
reports, and published to the topic exchange `offload.events` (app/jobs.py) with its type as
the routing key: by the relay, or, for a queued registration's `user.registered`, by the request
itself (the relay takes over if the broker does not confirm it). The web app never knows who
listens: the email and SMS queues are bound to `user.registered` like any other subscriber.
The body is versioned JSON, the same bytes on the wire and in the webhook POST:

    {"v": 1, "id": "<32 hex>", "type": "user.registered",
     "occurred_at": "2026-11-28T09:00:00.123456+00:00", "data": {...}}

What `data` holds is the least a subscriber needs to act, and never a secret (no code, no
link token, no status token) nor the user's email address or phone number: an event is copied
to every subscriber's queue and to third-party endpoints, and a subscriber that needs contact
details looks the user up with its own access. See the README's "Events" section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table

from app.db import compact_json
from app.models import Event, new_id

EVENT_VERSION = 1
USER_REGISTERED = "user.registered"
USER_EMAIL_VERIFIED = "user.email_verified"
USER_PHONE_VERIFIED = "user.phone_verified"
NOTIFICATION_SENT = "notification.sent"
NOTIFICATION_FAILED = "notification.failed"
EVENT_TYPES = (
    USER_REGISTERED,
    USER_EMAIL_VERIFIED,
    USER_PHONE_VERIFIED,
    NOTIFICATION_SENT,
    NOTIFICATION_FAILED,
)

# The `claimed_by` of an event its request holds: a queued registration's user.registered,
# which the request publishes itself, or an inline-sending one's, held until its sends are
# recorded. The relay takes an event over only when that lease runs out.
REQUEST_HOLDER = "request"

# Inserts go through SQLAlchemy Core on the table: they ride in transactions (a registration,
# a consumer's batch record) whose CPU is counted.
EVENTS = cast(Table, Event.__table__)


@dataclass(frozen=True)
class EventMessage:
    """An event as it goes on the wire: routing key = type, body = the envelope's JSON."""

    id: str
    type: str
    body: bytes


class MalformedEvent(ValueError):
    """A message body that is not a v1 event; a subscriber parks it."""


def event_row(event_type: str, data: dict[str, Any], occurred_at: datetime) -> dict[str, Any]:
    """The outbox row of one event, for an INSERT in the caller's transaction."""
    event_id = new_id()
    return {
        "id": event_id,
        "type": event_type,
        "body": {
            "v": EVENT_VERSION,
            "id": event_id,
            "type": event_type,
            "occurred_at": occurred_at.isoformat(),
            "data": data,
        },
        "status": "pending",
        "created_at": occurred_at,
    }


def user_event(event_type: str, user_id: str, occurred_at: datetime) -> dict[str, Any]:
    return event_row(event_type, {"user_id": user_id}, occurred_at)


def notification_event(
    notification_id: str, channel: str, status: str, occurred_at: datetime
) -> dict[str, Any]:
    """notification.sent or notification.failed (status "sent" or "failed")."""
    return event_row(
        NOTIFICATION_SENT if status == "sent" else NOTIFICATION_FAILED,
        {"notification_id": notification_id, "channel": channel, "status": status},
        occurred_at,
    )


def encode_event(body: dict[str, Any]) -> bytes:
    return compact_json(body).encode()


def decode_event(raw: bytes) -> dict[str, Any]:
    """The envelope of a v1 event, checked; MalformedEvent otherwise."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedEvent(f"body is not JSON: {exc}") from None
    return event_from_dict(body)


def event_from_dict(body: Any) -> dict[str, Any]:
    """The envelope of a v1 event, from its decoded JSON, checked; MalformedEvent otherwise."""
    if not isinstance(body, dict):
        raise MalformedEvent("event is not a JSON object")
    if body.get("v") != EVENT_VERSION:
        raise MalformedEvent(f"unsupported event version {body.get('v')!r}")
    for field in ("id", "type", "occurred_at"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise MalformedEvent(f"event field {field!r} must be a non-empty string")
    if not isinstance(body.get("data"), dict):
        raise MalformedEvent("event field 'data' must be an object")
    return cast(dict[str, Any], body)
