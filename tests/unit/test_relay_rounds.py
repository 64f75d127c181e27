"""What one round of the relay writes, and what it publishes.

The relay runs beside the web and, on SQLite, every write it makes takes the database's one
write lock that the web's registrations wait for. Most of its rounds find nothing to do; the
rest publish the notification events the consumers write, two per queued registration.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, insert, select

from app.events import EVENTS, NOTIFICATION_SENT, encode_event, notification_event
from app.messaging import InMemoryPublisher
from app.models import Event, utcnow
from services.relay import publish_events_once, relay_once, sweep_once

OPTIONS = {"relay_id": "relay-1", "batch_size": 10, "publish_timeout": 1}


def writes_during(sessions, run):
    """Every statement other than a SELECT that `run()` sends to the database."""
    written: list[str] = []
    with sessions() as session:
        engine = session.get_bind()

    def capture(_conn, _cursor, statement, _parameters, _context, _many):
        if not statement.lstrip().upper().startswith("SELECT"):
            written.append(" ".join(statement.split())[:80])

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return written


def add_sent_events(sessions, ages_seconds):
    """Pending notification.sent events, created `ages_seconds` ago, in that order."""
    rows = [
        notification_event("n" * 31 + str(i), "email", "sent", utcnow() - timedelta(seconds=age))
        for i, age in enumerate(ages_seconds)
    ]
    with sessions() as session:
        session.execute(insert(EVENTS), rows)
        session.commit()
    return rows


def test_a_round_with_nothing_to_do_writes_nothing(sessions):
    relay = InMemoryPublisher()

    def idle_round():
        assert publish_events_once(sessions, relay, **OPTIONS) == 0
        assert relay_once(sessions, relay, grace_seconds=30, **OPTIONS) == 0
        assert sweep_once(sessions, relay, stuck_seconds=900, **OPTIONS) == 0

    assert writes_during(sessions, idle_round) == []
    assert relay.events == [] and relay.published == []


def test_events_go_out_oldest_first_as_stored(sessions):
    rows = add_sent_events(sessions, [5, 30, 10])
    relay = InMemoryPublisher()

    assert publish_events_once(sessions, relay, **OPTIONS) == 3

    oldest_first = [rows[1], rows[2], rows[0]]
    assert [(e.id, e.type) for e in relay.events] == [
        (row["id"], NOTIFICATION_SENT) for row in oldest_first
    ]
    # The stored body is the message, byte for byte what the web publishes itself.
    assert [e.body for e in relay.events] == [encode_event(row["body"]) for row in oldest_first]
    with sessions() as session:
        assert set(session.scalars(select(Event.status))) == {"published"}


def test_a_batch_without_registrations_leaves_the_notifications_alone(sessions):
    add_sent_events(sessions, [1, 2])
    relay = InMemoryPublisher()

    written = writes_during(sessions, lambda: publish_events_once(sessions, relay, **OPTIONS))

    assert len(relay.events) == 2
    assert [w for w in written if w.upper().startswith("UPDATE NOTIFICATIONS")] == []
