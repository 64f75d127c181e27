"""The web's marks of what the broker confirmed, written off the event loop's thread on SQLite:
the same rows change as on the loop, the statements find them by key, a failure is reported
(the relay publishes those events again), and closing waits for the last batch."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import gevent
import gevent.event
import pytest
from sqlalchemy import select

from app.db import OffLoopWriter, SqliteStatement, make_engine, make_session_factory
from app.events import REQUEST_HOLDER
from app.ledger import _MARK_PUBLISHED_SQLITE, _MARK_QUEUED_SQLITE, QueuedMarker
from app.models import Event, Notification
from app.registration import Registered, register_user, validate_registration


def register(sessions, settings, number: int) -> Registered:
    data = {"name": "Cy", "email": f"cy{number}@example.com", "phone": f"+1650253002{number}"}
    with sessions() as session:
        return register_user(session, settings, validate_registration(data), event_lease_seconds=30)


def statuses(sessions, registered: list[Registered]) -> tuple[set[str], set[str]]:
    with sessions() as session:
        rows = session.scalars(
            select(Notification.status).where(
                Notification.id.in_([n.id for r in registered for n in r.notifications])
            )
        ).all()
        events = session.execute(
            select(Event.status, Event.claimed_by).where(
                Event.id.in_([r.event.id for r in registered if r.event])
            )
        ).all()
    return set(rows), {f"{status}/{holder}" for status, holder in events}


def test_confirmed_rows_are_marked_off_the_loop_on_sqlite(sessions, settings):
    registered = [register(sessions, settings, number) for number in range(3)]
    marker = QueuedMarker(sessions, interval=0.01)
    assert marker._writer is not None  # a SQLite file, marks gathered: written off the loop

    def no_session():
        raise AssertionError("the marks were written through the session, on the loop")

    marker.sessions = no_session  # type: ignore[assignment]
    for one in registered:
        marker.mark(one.notifications, [one.event.id] if one.event else [])
    marker.close()

    rows, events = statuses(sessions, registered)
    assert rows == {"queued"}
    # published, and still the request's: it published them
    assert events == {f"published/{REQUEST_HOLDER}"}


def test_marks_at_once_and_elsewhere_stay_on_the_session(sessions, tmp_path: Path):
    assert QueuedMarker(sessions, interval=0)._writer is None  # written in the caller's greenlet
    memory = make_session_factory(make_engine("sqlite://"))
    assert QueuedMarker(memory, interval=0.05)._writer is None  # no file for a second connection


def test_the_statements_find_rows_by_key_whatever_the_batch(sessions, settings):
    registered = [register(sessions, settings, number) for number in range(3)]
    ids = [n.id for r in registered for n in r.notifications]
    with sessions() as session:
        connection = session.connection().connection.driver_connection
        for statement, listed in ((_MARK_QUEUED_SQLITE, ids), (_MARK_PUBLISHED_SQLITE, ids[:1])):
            parameters = statement.parameters({"ids": json.dumps(listed)})
            plan = " / ".join(
                str(row[-1])
                for row in connection.execute(f"EXPLAIN QUERY PLAN {statement.sql}", parameters)
            )
            assert "SEARCH" in plan and "USING INDEX sqlite_autoindex" in plan, plan
            assert "status" not in plan, plan  # not the status index: every pending row


def test_a_failed_batch_is_reported(tmp_path: Path, caplog):
    gone = make_engine(f"sqlite:///{tmp_path / 'gone' / 'offload.db'}")  # no such folder
    marker = QueuedMarker(make_session_factory(gone), interval=0.01)
    marker.mark([], ["an-event"])
    with caplog.at_level(logging.WARNING, logger="app.ledger"):
        marker.close()  # writes the batch, and waits for it
        gevent.sleep(0)  # the report runs on the hub, once the write is done
    assert "could not mark 1 confirmed events published" in caplog.text


def test_a_write_is_one_transaction(tmp_path: Path, sessions, settings):
    registered = register(sessions, settings, 7)
    database = sessions.kw["bind"].url.database
    writer = OffLoopWriter(database, busy_timeout=1)
    broken = SqliteStatement("UPDATE no_such_table SET x = 1", (), {})
    mark = (_MARK_QUEUED_SQLITE, {"ids": f'["{registered.notifications[0].id}"]'})
    with pytest.raises(sqlite3.OperationalError):
        writer.write([mark, (broken, {})]).get(timeout=5)
    rows, _events = statuses(sessions, [registered])
    assert rows == {"pending"}  # the first statement's change went with the second's failure


def test_one_batch_at_a_time_and_the_next_when_it_is_written(sessions):
    class SlowWriter:
        """Writes only when told: a batch waiting for SQLite's write lock."""

        def __init__(self) -> None:
            self.batches: list[tuple[list[str], list[str]]] = []
            self.results: list[gevent.event.AsyncResult] = []

        def write(self, statements):
            (_queued, rows), (_published, events) = statements
            self.batches.append((json.loads(rows["ids"]), json.loads(events["ids"])))
            self.results.append(gevent.event.AsyncResult())
            return self.results[-1]

    class Row:
        def __init__(self, id_: str) -> None:
            self.id, self.status = id_, "pending"

    writer = SlowWriter()
    marker = QueuedMarker(sessions, interval=0.001)
    marker._writer = writer  # type: ignore[assignment]
    marker.mark([Row("r1")], ["e1"])
    gevent.sleep(0.01)
    marker.mark([Row("r2")], ["e2"])
    marker.mark([Row("r3")], ["e3"])
    gevent.sleep(0.01)
    assert writer.batches == [(["r1"], ["e1"])]  # the second waits for the first

    writer.results[0].set(None)
    gevent.sleep(0.01)
    assert writer.batches == [(["r1"], ["e1"]), (["r2", "r3"], ["e2", "e3"])]

    writer.results[1].set(None)
    marker.close()
    assert len(writer.batches) == 2  # nothing left to write
