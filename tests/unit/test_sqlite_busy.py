"""Waiting for SQLite's write lock must not freeze the process's other greenlets, and the
greenlets that wait get the lock in the order they came."""

from __future__ import annotations

import sqlite3
from collections import Counter

import gevent
import gevent.event
import pytest
from sqlalchemy import event, text
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


class Attempts:
    """Each greenlet's INSERT attempts, counted by SQLite's trace callback (it sees every try,
    the ones the write lock refuses too), and a wait for a greenlet's count to reach a number."""

    def __init__(self) -> None:
        self.counts: Counter[object] = Counter()
        self._counted = gevent.event.Event()

    def trace(self, statement: str) -> None:
        if statement.startswith("INSERT"):
            self.counts[gevent.getcurrent()] += 1
            self._counted.set()

    def wait_for(self, writer: object, count: int) -> None:
        while self.counts[writer] < count:
            self._counted.clear()
            assert self._counted.wait(timeout=10), f"stuck at {self.counts[writer]} attempts"


def test_writers_that_find_the_lock_taken_get_it_in_the_order_they_came(database):
    # One writer has waited a while; three more come and find the lock taken; then it is free.
    # Each greenlet backing off on its own, the newcomers, whose pauses were still the shortest,
    # polled first and took the lock from the one that had waited longest; under steady
    # contention such a writer could lose every race until its busy timeout (a 503). In line,
    # they write in the order they came. No clock is read: the attempts are counted.
    holder = hold_write_lock(database)
    engine = make_engine(f"sqlite:///{database}", busy_timeout=30)
    attempts = Attempts()
    event.listen(engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(attempts.trace))

    def write(n: int) -> None:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})

    first = gevent.spawn(write, 1)
    attempts.wait_for(first, 8)  # long enough for a lone writer's pauses to have grown
    writers = [first]
    for n in (2, 3, 4):
        writers.append(gevent.spawn(write, n))
        attempts.wait_for(writers[-1], 1)  # it has found the lock taken
    holder.execute("COMMIT")
    gevent.joinall(writers, raise_error=True)
    with engine.connect() as connection:
        written = connection.execute(text("SELECT x FROM t ORDER BY rowid")).scalars().all()
    assert written == [1, 2, 3, 4]


def test_the_poller_pauses_off_the_event_loops_timers(database, monkeypatch):
    # Another process holds the lock a few tenths of a millisecond at a time, but the event
    # loop's timers wake no sooner than about 1.1 ms whatever they are asked for (libev waits
    # in epoll, which counts whole milliseconds): a poller pausing on them with gevent.sleep
    # paused 1.1 ms when it asked for 0.5. Its pauses must not be the loop's timers.
    holder = hold_write_lock(database)
    engine = make_engine(f"sqlite:///{database}", busy_timeout=5)
    attempts = Attempts()
    event.listen(engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(attempts.trace))
    timer_pauses = []
    monkeypatch.setattr(gevent, "sleep", lambda seconds=0, **_: timer_pauses.append(seconds))

    def write() -> None:
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (1)"))

    writer = gevent.spawn(write)
    attempts.wait_for(writer, 5)  # refused four times, with a pause after each
    holder.execute("COMMIT")
    writer.join(timeout=10)
    assert writer.successful()
    assert timer_pauses == []
