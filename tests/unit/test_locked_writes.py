"""The group commit's statements run straight on sqlite3 (app/db.py, LockedSqliteWrites): the rows
they write are the engine's, byte for byte, and SQLite's errors reach the caller as the engine
would raise them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from app.db import EngineWrites, LockedSqliteWrites, SqliteStatement, make_engine
from app.events import EVENTS
from app.models import Notification, User, new_id, utcnow
from app.registration import _insert_event, _insert_notifications, _insert_user_unless_taken

# Both registrations are written at the same moment, so their timestamps are compared too.
NOW = utcnow()


def user_row(number: int) -> dict[str, Any]:
    now = NOW
    return {
        "id": new_id(),
        "name": f"Ünïcode {number}",
        "email": f"u{number}@example.com",
        "email_key": f"u{number}@example.com",
        "phone": f"+1650253{number:04d}",
        "created_at": now,
        "sms_code_hash": "h" * 64,
        "sms_code_expires_at": now + timedelta(minutes=15),
        "sms_code_attempts": 0,
        "status_token_hash": new_id(),
        "email_verification_id": new_id(),
    }


def notification_rows(user_id: str, event_id: str) -> list[dict[str, Any]]:
    return [
        {
            "id": new_id(),
            "user_id": user_id,
            "channel": channel,
            "status": "pending",
            "payload": {"v": 1, "to": "ü@example.com", "text": "a\nb", "n": [1, 2.5, None]},
            "attempts": 0,
            "last_error": None,
            "created_at": NOW,
            "send_lease_token": "t",
            "event_id": event_id,
        }
        for channel in ("email", "sms")
    ]


def event_row() -> dict[str, Any]:
    event_id = new_id()
    return {
        "id": event_id,
        "type": "user.registered",
        "body": {"v": 1, "occurred_at": "2026-11-29T00:00:00+00:00", "data": {"ü": "x y"}},
        "status": "pending",
        "created_at": NOW,
        "claimed_by": "request",
    }


def write_registration(writes: EngineWrites, number: int) -> tuple[str, str]:
    user = user_row(number)
    event = event_row()
    assert writes.execute(_insert_user_unless_taken("sqlite"), user) == [(user["id"],)]
    writes.execute(_insert_notifications(20.0), notification_rows(user["id"], event["id"]))
    assert writes.execute(_insert_event(30.0), event) == []
    return user["id"], event["id"]


def stored(connection: Any, user_id: str, event_id: str) -> list[Any]:
    """Every column as SQLite holds it (text, not what the ORM reads back), but the ids and the
    leases' database-clock timestamps."""
    users = connection.execute(text("SELECT * FROM users WHERE id = :id"), {"id": user_id})
    rows = [dict(users.mappings().one())]
    rows += [
        dict(row)
        for row in connection.execute(
            text("SELECT * FROM notifications WHERE user_id = :id ORDER BY channel"),
            {"id": user_id},
        ).mappings()
    ]
    events = connection.execute(text("SELECT * FROM events WHERE id = :id"), {"id": event_id})
    rows.append(dict(events.mappings().one()))
    volatile = {"id", "user_id", "event_id", "send_lease_until", "claimed_until"}
    volatile |= {"status_token_hash", "email_verification_id"}
    return [{k: v for k, v in row.items() if k not in volatile} for row in rows]


@pytest.fixture
def engine(database_url: str) -> Any:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_a_registration_written_straight_to_sqlite_is_stored_as_the_engine_stores_it(engine):
    with engine.connect() as connection:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        through_engine = write_registration(EngineWrites(connection), 1)
        direct = write_registration(LockedSqliteWrites(connection), 2)
        connection.commit()
        by_engine, by_sqlite = stored(connection, *through_engine), stored(connection, *direct)
    # The rows differ only in what differs between the two registrations.
    by_engine[0] = {**by_engine[0], "name": "N", "email": "E", "email_key": "E", "phone": "P"}
    by_sqlite[0] = {**by_sqlite[0], "name": "N", "email": "E", "email_key": "E", "phone": "P"}
    assert by_sqlite == by_engine
    # The columns the engine fills in: the Python-side default and the leases' clocks.
    with engine.connect() as connection:
        row = connection.execute(
            select(User.resends, Notification.send_lease_until, EVENTS.c.claimed_until)
            .join(Notification, Notification.user_id == User.id)
            .join(EVENTS, EVENTS.c.id == Notification.event_id)
            .where(User.id == direct[0])
        ).first()
    assert row is not None
    resends, lease_until, claimed_until = row
    assert resends == 0
    assert lease_until > utcnow() + timedelta(seconds=15)
    assert claimed_until > utcnow() + timedelta(seconds=25)


def test_sqlite_errors_are_raised_as_the_engine_raises_them(engine):
    with engine.connect() as connection:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        writes = LockedSqliteWrites(connection)
        row = event_row()
        writes.execute(insert(EVENTS), row)
        with pytest.raises(IntegrityError):  # its key, taken
            writes.execute(insert(EVENTS), row)
        missing = SqliteStatement("INSERT INTO no_such_table VALUES (1)", (), {})
        with pytest.raises(OperationalError, match="no such table"):
            writes.execute_compiled(missing, {})
        connection.rollback()


def test_a_callable_default_is_refused_at_compile_time():
    # Only the engine's execution can call it; the direct path would write NULL instead.
    table = Table(
        "with_callable",
        MetaData(),
        Column("id", String, primary_key=True, default=new_id),
        Column("name", String),
    )
    with pytest.raises(ValueError, match="only a constant default"):
        SqliteStatement.compile(insert(table), columns=("name",))
