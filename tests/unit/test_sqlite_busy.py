"""Waiting for SQLite's write lock must not freeze the process's other greenlets."""

from __future__ import annotations

import sqlite3

import gevent
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.db import make_engine


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "busy.db"
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x INTEGER)")
    return path


def hold_write_lock(path):
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_writer_waiting_for_the_lock_lets_other_greenlets_run(database):
    # Another connection (as another process would) holds the write lock. The only thing that
    # releases it is a greenlet of this process: if waiting for the lock blocked the hub, the
    # release could never run and the insert would time out.
    holder = hold_write_lock(database)
    engine = make_engine(f"sqlite:///{database}", busy_timeout=30)
    ticks = []

    def release_after_a_few_ticks():
        while len(ticks) < 5:
            ticks.append(1)
            gevent.sleep(0.005)
        holder.execute("COMMIT")

    releaser = gevent.spawn(release_after_a_few_ticks)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (1)"))
    releaser.join(timeout=5)
    assert len(ticks) == 5
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 1


def test_past_the_busy_timeout_the_error_is_raised(database):
    holder = hold_write_lock(database)
    engine = make_engine(f"sqlite:///{database}", busy_timeout=0.05)
    with pytest.raises(OperationalError, match="locked"), engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (1)"))
    holder.execute("ROLLBACK")
