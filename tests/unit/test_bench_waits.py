"""What the bench waits for between slices: nothing a slice caused may load the next one.

After a queued slice the consumers record their sends, and each record writes a
`notification.sent` event to the outbox, which the relay publishes next. The queues are empty
by then and every job recorded, yet the relay (and RabbitMQ, taking in what it publishes) still
has hundreds of events to go: on a stack of its own, 250-1,070 after a 2-s c=50 slice, gone
0.4-0.8 s later. A slice that started at once paid for them in its warm-up and first second,
and the queued slice's CPU sample missed them.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select, update

from app.db import make_engine
from app.events import notification_event
from app.models import Event, new_id
from bench.runner import BenchSession


class EmptyQueues:
    """The queue-depth poller, as it reads once the work queues are empty."""

    def latest(self) -> dict[str, int]:
        return {"email": 0, "sms": 0}


def session_on(database_url: str, said: list[str]) -> BenchSession:
    """A BenchSession with only what its waits read: the queues, the database, its progress."""
    session = object.__new__(BenchSession)
    session.poller = EmptyQueues()  # type: ignore[assignment]
    session.engine = make_engine(database_url)
    session.progress = said.append
    return session


def publish_later(database_url: str, event_id: str, after: float) -> threading.Thread:
    """The relay, publishing one event `after` seconds from now."""

    def publish() -> None:
        engine = make_engine(database_url)
        with engine.begin() as connection:
            connection.execute(update(Event).where(Event.id == event_id).values(status="published"))
        engine.dispose()

    timer = threading.Timer(after, publish)
    timer.start()
    return timer


def pending_event(database_url: str) -> str:
    row = notification_event(new_id(), "email", "sent", datetime.now(UTC))
    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(insert(Event), [row])
    engine.dispose()
    return str(row["id"])


def status_of(session: BenchSession, event_id: str) -> str:
    with session.engine.connect() as connection:
        return str(connection.execute(select(Event.status).where(Event.id == event_id)).scalar())


@pytest.mark.parametrize(
    "wait",
    [
        # Before every slice: the work queues (empty here) and the outbox.
        lambda session: session.wait_idle(timeout=10),
        # The end of a queued slice's drain, and of its CPU sample: the relay's part is in it.
        lambda session: session.wait_published(timeout=10),
    ],
    ids=["before-a-slice", "after-a-queued-slice"],
)
def test_the_bench_waits_for_the_relay(database_url, wait):
    said: list[str] = []
    session = session_on(database_url, said)
    event_id = pending_event(database_url)
    relay = publish_later(database_url, event_id, after=0.3)
    try:
        wait(session)
        assert status_of(session, event_id) == "published"
        assert not said  # no warning: the wait ended because the outbox was empty
    finally:
        relay.join()
        session.close()


def test_an_outbox_that_never_empties_is_reported_not_waited_for_forever(database_url):
    said: list[str] = []
    session = session_on(database_url, said)
    pending_event(database_url)
    try:
        assert session.wait_published(timeout=0.2) == 1
        session.wait_idle(timeout=0.2)
        assert len(said) == 2
        assert all("1 events not published" in line for line in said), said
    finally:
        session.close()
