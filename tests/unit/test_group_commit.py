"""On SQLite, the registrations of a web process that wait for the write lock together are
written in one transaction (app/groupcommit.py), and one refused or failing registration
never writes or loses another's rows."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

import gevent
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

import app.db
from app.db import SqliteStatement
from app.events import EVENTS
from app.groupcommit import GroupCommit, group_commit
from app.models import Notification, User
from app.registration import AlreadyRegistered, register_user, validate_registration


def registration(number: int, *, email: str | None = None) -> Any:
    return validate_registration(
        {
            "name": f"User {number}",
            "email": email or f"user{number}@example.com",
            "phone": f"+1650253{number:04d}",
        }
    )


def database_path(sessions: Any) -> str:
    path: str = sessions.kw["bind"].url.database
    return path


def count_commits(sessions: Any) -> list[int]:
    commits: list[int] = []
    event.listen(sessions.kw["bind"], "commit", lambda _connection: commits.append(1))
    return commits


def register_all_while_the_lock_is_held(sessions: Any, settings: Any, registrations: list[Any]):
    """Register each in a greenlet of its own while another connection (as a consumer process
    would) holds SQLite's write lock; let the lock go once every greenlet is waiting."""
    holder = sqlite3.connect(database_path(sessions), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    def register(each: Any) -> Any:
        with sessions() as session:
            return register_user(session, settings, each)

    greenlets = [gevent.spawn(register, each) for each in registrations]
    gevent.sleep(0.05)  # every greenlet has handed its rows over and waits
    holder.execute("COMMIT")
    holder.close()
    gevent.joinall(greenlets, timeout=10)
    return greenlets


def counts(sessions: Any) -> tuple[int, int, int]:
    with sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(User)) or 0,
            session.scalar(select(func.count()).select_from(Notification)) or 0,
            session.scalar(select(func.count()).select_from(EVENTS)) or 0,
        )


def test_registrations_waiting_for_the_lock_are_committed_together(sessions, settings):
    commits = count_commits(sessions)
    greenlets = register_all_while_the_lock_is_held(
        sessions, settings, [registration(n) for n in range(10)]
    )
    assert all(g.successful() for g in greenlets), [g.exception for g in greenlets]
    assert len(commits) == 1  # one per registration when each waited for the lock on its own
    assert counts(sessions) == (10, 20, 10)


def test_a_taken_address_in_a_shared_transaction_refuses_only_its_own_registration(
    sessions, settings
):
    with sessions() as session:
        register_user(session, settings, registration(0, email="taken@example.com"))
    greenlets = register_all_while_the_lock_is_held(
        sessions,
        settings,
        [registration(1), registration(2, email="taken@example.com"), registration(3)],
    )
    first, refused, third = greenlets
    assert first.successful() and third.successful()
    assert isinstance(refused.exception, AlreadyRegistered)
    assert refused.exception.fields == {"email": "This email address is already registered."}
    # The refused registration wrote no row, and took none of the others' with it.
    assert counts(sessions) == (3, 6, 3)


def test_two_registrations_of_one_address_in_one_transaction_cannot_both_succeed(
    sessions, settings
):
    commits = count_commits(sessions)
    greenlets = register_all_while_the_lock_is_held(
        sessions,
        settings,
        [registration(1, email="same@example.com"), registration(2, email="same@example.com")],
    )
    first, second = greenlets
    assert first.successful()
    assert isinstance(second.exception, AlreadyRegistered)
    assert counts(sessions) == (1, 2, 1)
    assert len(commits) == 1  # both were in the one transaction


def test_a_failed_transaction_fails_every_registration_in_it_and_writes_none(
    sessions, settings, monkeypatch
):
    writer = group_commit(sessions.kw["bind"])
    assert writer is not None
    compiled_for_sqlite = app.db._compiled_for_sqlite

    def events_insert_fails(statement: Any, dialect: Any, columns: Any) -> SqliteStatement:
        # The group commit writes straight to sqlite3 (LockedSqliteWrites): make SQLite itself
        # fail the third statement of every registration, as a full or failing disk would.
        compiled = compiled_for_sqlite(statement, dialect, columns)
        if not compiled.sql.startswith("INSERT INTO events"):
            return compiled
        return dataclasses.replace(compiled, sql=compiled.sql.replace("events", "no_such", 1))

    monkeypatch.setattr(app.db, "_compiled_for_sqlite", events_insert_fails)
    greenlets = register_all_while_the_lock_is_held(
        sessions, settings, [registration(n) for n in range(3)]
    )
    monkeypatch.undo()
    assert [type(g.exception) for g in greenlets] == [OperationalError] * 3
    assert counts(sessions) == (0, 0, 0)
    # The writer goes on: the next registration is written.
    with sessions() as session:
        register_user(session, settings, registration(9))
    assert counts(sessions) == (1, 2, 1)


def test_a_batch_is_bounded_so_one_transaction_never_holds_the_hub_long(sessions, settings):
    engine = sessions.kw["bind"]
    commits = count_commits(sessions)
    writer = GroupCommit(engine, max_batch=4)
    holder = sqlite3.connect(database_path(sessions), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    def insert(bucket: str) -> Any:
        def rows(writes: Any) -> bool:
            writes.connection.exec_driver_sql(
                "INSERT INTO rate_limit_counters (bucket, window_start, window_end, hits) "
                "VALUES (?, '2026-01-01', '2026-01-02', 1)",
                (bucket,),
            )
            return True

        return rows

    greenlets = [gevent.spawn(writer.write, insert(f"b{n}")) for n in range(10)]
    gevent.sleep(0.05)
    holder.execute("COMMIT")
    gevent.joinall(greenlets, timeout=10)
    assert [g.value for g in greenlets] == [True] * 10
    assert len(commits) == 3  # 4 + 4 + 2


@pytest.mark.parametrize("url", ["sqlite://", "postgresql://u@127.0.0.1:1/x"])
def test_only_a_sqlite_file_gets_a_group_writer(url):
    from app.db import make_engine

    assert group_commit(make_engine(url)) is None


def test_an_engine_no_one_uses_any_more_is_let_go(tmp_path):
    # The writers are kept per engine in a WeakKeyDictionary; a writer that held its engine
    # kept that engine (its pool, its open files) alive for the life of the process.
    import gc
    import weakref

    from app.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'gone.db'}")
    assert group_commit(engine) is not None
    gone = weakref.ref(engine)
    del engine
    gc.collect()
    assert gone() is None
