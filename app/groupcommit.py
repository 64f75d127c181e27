"""Group commit: the registrations of a web process written to SQLite together.

SQLite lets one connection write at a time, across all processes. Each request used to wait
for that lock on its own, and at 50 concurrent requests in queued mode more than half of the
web's requests in flight were waiting for it, 274 ms each on average (a sampled point of
`make bench`), behind the consumers' claims and records: a waiting greenlet gets one try per
turn of its busy hub, tens of milliseconds, while a consumer in its quiet process tries every
millisecond and nearly always wins.

Here one greenlet per process and database writes. A request hands over a function that writes
its registration and waits. The writer takes the lock (BEGIN IMMEDIATE, waiting cooperatively
as every statement does, app/db.py), then runs every registration waiting by then in the one
transaction and commits once: the registrations that arrived while it waited for the lock
join the transaction instead of each queueing for the lock. Once the lock is held no statement
can find it taken, so the registrations' statements run straight on sqlite3's cursor, past the
engine's execution (app/db.py, `LockedSqliteWrites`).

PostgreSQL locks rows, not the database, so there each request writes in its own transaction
(`group_commit` returns None).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

import gevent
import gevent.event
from sqlalchemy.engine import Engine

from app.db import EngineWrites, LockedSqliteWrites, sqlite_file

# A transaction runs without yielding to the hub (SQLite's calls do not yield): at 0.15-0.3 ms
# of statements a registration, 24 hold it for well under the 20 ms the bench counts a stall
# from. More waiting than that go in the next transaction, after the hub has had a turn.
MAX_BATCH = 24

Write = Callable[[EngineWrites], bool]


class GroupCommit:
    """The one writer of registrations for `engine` in this process."""

    def __init__(self, engine: Engine, *, max_batch: int = MAX_BATCH) -> None:
        # Weakly: the registry below is keyed weakly by the engine, and a strong reference
        # from its value would keep the engine (its pool, its open files) for ever.
        self._engine = weakref.ref(engine)
        self.pid = os.getpid()
        self.max_batch = max_batch
        self._waiting: list[tuple[Write, gevent.event.AsyncResult]] = []
        self._has_work = gevent.event.Event()
        self._writer: gevent.Greenlet | None = None

    def write(self, rows: Write) -> bool:
        """Run `rows` in the next shared transaction and return what it returned, once that
        transaction is committed.

        `rows` writes one registration and says whether it did; it must write nothing when it
        returns False, since the transaction commits what the others wrote. What the
        transaction raises (the lock held past the busy timeout, a full disk, an error in one
        of the writes) is raised to every request in it: none of their rows were written.
        """
        outcome: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self._waiting.append((rows, outcome))
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._write_while_waiting)
        self._has_work.set()
        written: bool = outcome.get()
        return written

    def _write_while_waiting(self) -> None:
        while True:
            self._has_work.wait()
            self._has_work.clear()
            while self._waiting:
                self._commit_next_batch()
                gevent.sleep(0)  # the requests just let go answer before the next batch

    def _commit_next_batch(self) -> None:
        batch: list[tuple[Write, gevent.event.AsyncResult]] = []
        try:
            engine = self._engine()
            if engine is None:  # unreachable while a request writes: its session holds it
                raise RuntimeError("the engine of this group commit is gone")
            with engine.connect() as connection:
                # Take the write lock first, then the batch: whoever arrived while the lock
                # was being waited for is in it.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                batch, self._waiting = (
                    self._waiting[: self.max_batch],
                    self._waiting[self.max_batch :],
                )
                writes = LockedSqliteWrites(connection)  # the lock is taken: straight to SQLite
                written = [rows(writes) for rows, _outcome in batch]
                connection.commit()
        except BaseException as exc:
            if not batch:  # it failed before taking the batch: every waiter was in line for it
                batch, self._waiting = self._waiting, []
            for _rows, outcome in batch:
                outcome.set_exception(exc)
            if not isinstance(exc, Exception):
                raise  # the greenlet is being killed (the process is stopping)
            return
        for (_rows, outcome), wrote in zip(batch, written, strict=True):
            outcome.set(wrote)


_writers: weakref.WeakKeyDictionary[Engine, GroupCommit] = weakref.WeakKeyDictionary()


def group_commit(engine: Engine) -> GroupCommit | None:
    """The registrations' writer for `engine` in this process; None where each request should
    write on its own (PostgreSQL, an in-memory SQLite database)."""
    if sqlite_file(engine.url) is None:
        return None
    writer = _writers.get(engine)
    if writer is None or writer.pid != os.getpid():
        # New, or inherited through a fork (gunicorn): a process writes with its own greenlet.
        writer = _writers[engine] = GroupCommit(engine)
    return writer
