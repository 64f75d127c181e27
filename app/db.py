"""Database plumbing shared by the web app and the workers: the declarative base, the engine,
sessions. Plain SQLAlchemy: the Flask per-request session lives in `app/extension.py`.

The schema is created by Alembic only (`migrations/`); nothing here calls `create_all`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.monkey
import pg8000.exceptions
import pg8000.legacy
from sqlalchemy import (
    JSON,
    DateTime,
    MetaData,
    SQLColumnExpression,
    TypeDecorator,
    bindparam,
    create_engine,
    event,
    literal,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, configure_mappers, sessionmaker
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ClauseElement, ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.schema import ScalarElementColumnDefault

# Named constraints make migrations reproducible: autogenerate and every backend agree on the
# names, so a later migration can drop or alter them by name. (Which field a duplicate
# registration clashed on is not read from the constraint's name, whose wording differs by
# driver: app/registration.py looks the email and phone up again after the IntegrityError.)
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no time zone type: it hands back naive datetimes. Reading them back as UTC keeps
    comparisons with `utcnow()` valid and every API timestamp in the same ISO 8601 form.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use app.models.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class database_now(FunctionElement[datetime]):
    """The database's clock, plus `seconds`: every lease is timed by the one clock all hosts share.

    Leases written and compared with each host's own clock would let a host whose clock runs
    ahead take a lease that another still holds.
    """

    type = UTCDateTime()
    inherit_cache = True
    name = "database_now"

    def __init__(self, seconds: float | BindParameter[float] = 0.0) -> None:
        """`seconds` a number, or a named bind parameter for a statement built once."""
        if not isinstance(seconds, BindParameter):
            seconds = bindparam(None, float(seconds), unique=True)
        super().__init__(seconds)


@compiles(database_now)
def _database_now(element: database_now, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"(CURRENT_TIMESTAMP + make_interval(secs => {compiler.process(seconds, **kw)}))"


@compiles(database_now, "sqlite")
def _database_now_sqlite(element: database_now, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    # The text form SQLAlchemy itself writes for a SQLite DATETIME, so comparisons with stored
    # values are comparisons of like with like.
    return (
        "strftime('%Y-%m-%d %H:%M:%f000', 'now', "
        f"({compiler.process(seconds, **kw)}) || ' seconds')"
    )


class json_with_string(FunctionElement[Any]):
    """A JSON object column with one top-level key set to a string, computed by the database:
    an UPDATE that rewrites part of a JSON column sends neither the column nor the value back
    and forth through Python's JSON encoder."""

    type = JSON()
    inherit_cache = True
    name = "json_with_string"

    def __init__(self, column: ColumnElement[Any], key: str, text: str) -> None:
        super().__init__(column, literal(key), literal(text))


@compiles(json_with_string)
def _json_with_string(element: json_with_string, compiler: SQLCompiler, **kw: Any) -> str:
    column, key, text = (compiler.process(clause, **kw) for clause in element.clauses)
    # The column is `json` (it keeps what was written); jsonb_set works on jsonb.
    return (
        f"CAST(jsonb_set(CAST({column} AS JSONB), ARRAY[CAST({key} AS TEXT)], "
        f"to_jsonb(CAST({text} AS TEXT))) AS JSON)"
    )


@compiles(json_with_string, "sqlite")
def _json_with_string_sqlite(element: json_with_string, compiler: SQLCompiler, **kw: Any) -> str:
    column, key, text = (compiler.process(clause, **kw) for clause in element.clauses)
    # json_set writes its result compact, the form the engine stores (compact_json).
    return f"json_set({column}, '$.' || {key}, {text})"


def unindexed(column: SQLColumnExpression[str]) -> ColumnElement[str]:
    """`column` as an expression no index covers (`column || ''`), for a condition that should
    filter the rows another index finds, not choose the index.

    Without statistics SQLite reckons an equality on an indexed column matches about ten rows,
    so from three ids on it chose the status index over the key for `id IN (...) AND status =
    'pending'`: a batch of updates then read every pending row. PostgreSQL plans the same
    statement by its key either way."""
    return column + ""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_configurer(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer, and synchronous=NORMAL skips the fsync on
    # every commit (about 1.9 ms -> 0.01 ms here): a commit survives a process crash but the
    # last transactions may be lost on power failure. busy_timeout is 0: SQLite's own busy
    # handler sleeps inside C, which would freeze every greenlet of the process while another
    # process holds the write lock; the waiting is done by `_wait_while_busy` instead.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_file(url: URL) -> str | None:
    """The database file of a SQLite URL; None for an in-memory database or another backend."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return url.database


def upsert_insert(dialect_name: str) -> Callable[..., Any]:
    """The dialect's `insert` construct, the one with ON CONFLICT: PostgreSQL and SQLite both
    spell it so, but each builds its own."""
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


def checkpoint_off_the_loop(engine: Engine) -> None:
    """For a process that serves (the web, a consumer, the relay): SQLite's checkpoints run on
    a thread of their own, never in a commit on the event loop. Nothing for PostgreSQL or an
    in-memory database. Call it at start, before the first request or job.

    A checkpoint copies the write-ahead log back into the database file, with its fsyncs. By
    default SQLite runs one inside the commit that finds the log past 1,000 pages, so on the
    event loop of whichever process commits: at 50 concurrent registrations under gunicorn the
    group writer's commit took 5-15 ms 126 times in 25 s and over 15 ms 33 times (the log grows
    by a thousand pages every fraction of a second here), and every greenlet of the process
    waited each time. Now this engine's connections never checkpoint (`wal_autocheckpoint=0`),
    and one thread per process and database file runs a PASSIVE checkpoint every
    `CHECKPOINT_INTERVAL` seconds instead. Python's sqlite3 lets go of the GIL while SQLite
    works, so the greenlets go on. A process that writes without this (a migration, a command,
    a test) keeps SQLite's default.
    """
    database = sqlite_file(engine.url)
    if database is None:
        return
    event.listen(engine, "connect", _no_checkpoint_on_commit)
    engine.dispose()  # a connection made before goes, and comes back without it
    _checkpoint_in_a_thread(os.path.abspath(database))


def _no_checkpoint_on_commit(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")


# The files this process checkpoints, by process: a thread does not survive a fork (gunicorn's
# workers start their own).
_checkpointing: set[tuple[int, str]] = set()
CHECKPOINT_INTERVAL = 0.1


def _checkpoint_in_a_thread(database: str) -> None:
    """Start the thread of `checkpoint_off_the_loop` for `database`, once per process.

    A PASSIVE checkpoint never waits for a writer or a reader: it copies what it can, and the
    next writer starts the log again from its beginning once all of it is in the database file
    and no reader still needs it. Another process's checkpoint running at the time makes this
    one skip a turn. The log's file grows more between those restarts than with SQLite's
    default (to 60-64 MB in a c=50 run of the bench, against 18 MB; checkpointing every 10 ms
    while the log is long did not change it: the readers of the other processes decide when it
    can restart), and SQLite keeps the file at its largest size.
    """
    key = (os.getpid(), database)
    if key in _checkpointing:
        return
    _checkpointing.add(key)
    _start_os_thread(_checkpoint_every_interval, (database,))


def _checkpoint_every_interval(database: str) -> None:
    # An OS thread, not a greenlet, with the unpatched sleep: it must run while the event loop
    # is busy, and never block it.
    connection = sqlite3.connect(database, timeout=0, check_same_thread=False)
    while True:
        _os_sleep(CHECKPOINT_INTERVAL)
        # Busy (another process checkpoints), or the file is gone: the next turn.
        with contextlib.suppress(sqlite3.Error):
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


_start_os_thread = gevent.monkey.get_original("_thread", "start_new_thread")
_os_sleep = gevent.monkey.get_original("time", "sleep")
_allocate_os_lock = gevent.monkey.get_original("_thread", "allocate_lock")


@dataclass(frozen=True)
class SqliteStatement:
    """A Core statement compiled once to SQLite's SQL, for a plain sqlite3 connection."""

    sql: str
    names: tuple[str, ...]  # the positional parameters, in order
    defaults: dict[str, Any]  # the values the statement carries itself
    # Each parameter's bind processor (None: passed as it is), by position: what the engine
    # would make of a value (a datetime's text, a JSON column's document).
    processors: tuple[Callable[[Any], Any] | None, ...] = ()

    @classmethod
    def compile(
        cls,
        statement: ClauseElement,
        *,
        dialect: Dialect | None = None,
        columns: Sequence[str] = (),
        **placeholders: Any,
    ) -> SqliteStatement:
        """`placeholders`: a value for each parameter the caller will give, any will do.

        `dialect`: the engine's, whose JSON serializer the JSON columns' processors use (the
        default dialect's `json.dumps` spaces what the engine's `compact_json` does not).
        `columns`: for an INSERT, the columns the caller gives values for, as the engine
        compiles it for a row with those keys; a column left out that has a Python-side
        default gets it (a constant only: a callable default needs the engine's execution).
        """
        dialect = dialect or sqlite.dialect()
        compiled = statement.compile(dialect=dialect, column_keys=list(columns) or None)
        assert isinstance(compiled, SQLCompiler)  # a DML or SELECT statement
        defaults = dict(compiled.construct_params({**dict.fromkeys(columns), **placeholders}))
        for column in compiled.insert_prefetch:
            default = column.default
            if not isinstance(default, ScalarElementColumnDefault):
                raise ValueError(f"{column.key}: only a constant default can be compiled in")
            defaults[column.key] = default.arg
        names = tuple(compiled.positiontup or ())
        processors = tuple(
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in names
        )
        return cls(str(compiled), names, defaults, processors)

    def parameters(self, values: dict[str, Any]) -> tuple[Any, ...]:
        merged = {**self.defaults, **values}
        if not self.processors:
            return tuple(merged[name] for name in self.names)
        return tuple(
            merged[name] if process is None or merged[name] is None else process(merged[name])
            for name, process in zip(self.names, self.processors, strict=True)
        )


class EngineWrites:
    """A transaction's statements, run through SQLAlchemy: any database, any transaction (on
    SQLite the engine waits for the write lock without stopping the event loop,
    `_wait_while_busy`)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def execute(
        self, statement: Executable, values: dict[str, Any] | list[dict[str, Any]]
    ) -> list[tuple[Any, ...]]:
        """Run `statement` for one row of values, or for each of a list; return the rows its
        RETURNING gave, if any."""
        result = self.connection.execute(statement, values)
        return [tuple(row) for row in result] if result.returns_rows else []


class LockedSqliteWrites(EngineWrites):
    """The same statements, run straight on sqlite3's cursor: for a transaction that already
    holds SQLite's write lock (a group commit's, begun IMMEDIATE), where no statement can find
    the lock taken and the engine's waiting has nothing to do.

    The engine's execution of a prebuilt INSERT (its cache lookup, the execution context, the
    result object, the events) cost more CPU than SQLite's own work: a registration's three
    INSERTs took 0.21-0.23 ms of CPU through it in a group of 24, 0.15 this way (in-process,
    warm). Each statement is compiled once per dialect and set of columns, as the engine would
    compile it, and its values processed as the engine would (tests/unit/test_locked_writes.py
    holds the rows to the engine's). SQLite's errors are raised as the engine raises them
    (`sqlalchemy.exc.DBAPIError`'s subclasses), so a caller handles them the same either way.
    What listens to the engine's cursor events (`before_cursor_execute`: a tracer, a statement
    counter) does not see these statements; it still sees the transaction's BEGIN and COMMIT.
    """

    def execute(
        self, statement: Executable, values: dict[str, Any] | list[dict[str, Any]]
    ) -> list[tuple[Any, ...]]:
        rows = values if isinstance(values, list) else [values]
        compiled = _compiled_for_sqlite(statement, self.connection.dialect, tuple(rows[0]))
        return self.execute_compiled(compiled, values)

    def execute_compiled(
        self, compiled: SqliteStatement, values: dict[str, Any] | list[dict[str, Any]]
    ) -> list[tuple[Any, ...]]:
        cursor = self.connection.connection.cursor()
        try:
            if isinstance(values, list):
                parameters: Any = [compiled.parameters(row) for row in values]
                cursor.executemany(compiled.sql, parameters)
                return []
            parameters = compiled.parameters(values)
            rows: list[tuple[Any, ...]] = cursor.execute(compiled.sql, parameters).fetchall()
            return rows
        except sqlite3.Error as exc:
            raise DBAPIError.instance(compiled.sql, parameters, exc, sqlite3.Error) from exc
        finally:
            cursor.close()


@functools.lru_cache(maxsize=64)
def _compiled_for_sqlite(
    statement: Executable, dialect: Dialect, columns: tuple[str, ...]
) -> SqliteStatement:
    assert isinstance(statement, ClauseElement)
    return SqliteStatement.compile(statement, dialect=dialect, columns=columns)


class OffLoopWriter:
    """Writes to a SQLite file on a thread of gevent's pool, with a connection of its own: for
    the writes of a serving process that nobody waits for (the web's marks of what the broker
    confirmed).

    Python's sqlite3 lets go of the GIL while SQLite works, so a statement run here costs the
    event loop's thread only the handing over: the statement's own work (finding the rows,
    rewriting them and their indexes, the commit) runs on another core, beside the requests.
    Each `write` is one transaction, begun IMMEDIATE; SQLite's own busy handler waits for the
    write lock (it sleeps in C, on this thread, which stops nothing else). Writes run one at a
    time, and the connection is opened by the first, in the process that writes (a gunicorn
    worker, not its arbiter).
    """

    def __init__(self, database: str, *, busy_timeout: float) -> None:
        self.database = database
        self.busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None
        self._one_at_a_time = _allocate_os_lock()  # held by pool threads, not greenlets

    def write(
        self, statements: Sequence[tuple[SqliteStatement, dict[str, Any]]]
    ) -> gevent.event.AsyncResult:
        """Start writing `statements` in one transaction; the result holds the error, if any."""
        result: gevent.event.AsyncResult = gevent.get_hub().threadpool.spawn(
            self._write, statements
        )
        return result

    def _write(self, statements: Sequence[tuple[SqliteStatement, dict[str, Any]]]) -> None:
        with self._one_at_a_time:
            connection = self._connection or self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement, values in statements:
                    connection.execute(statement.sql, statement.parameters(values))
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.database,
            timeout=self.busy_timeout,
            isolation_level=None,  # the transactions are begun and ended above
            check_same_thread=False,  # one pool thread at a time, not always the same one
        )
        # As the engine's connections (WAL is a property of the file, set by them), but with
        # SQLite's own busy handler (`timeout`): its sleep in C stops only this thread, so the
        # engine's hub-friendly waiting (`_wait_while_busy`) is not needed here.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA wal_autocheckpoint=0")
        self._connection = connection
        return connection


# SQLITE_BUSY and SQLITE_BUSY_RECOVERY: the lock is held, try again. Not SQLITE_BUSY_SNAPSHOT
# (517): a read transaction that wants to write after another commit cannot succeed by waiting.
_SQLITE_BUSY_CODES = frozenset({5, 261})
# Another process holds the lock for a fraction of a millisecond at a time (a consumer's claim
# or record: 0.3-0.47 ms at the median, 1.2-2.4 ms at p90 in the bench at one client), and every
# waiter of this process is stalled meanwhile: polling is cheap (a refused try costs
# microseconds), waiting too long is not. Under load a pause lasts a turn of the hub.
_FIRST_PAUSE = 0.0002
_LONGEST_PAUSE = 0.0005


def _pause(seconds: float) -> None:
    """Let the other greenlets run for `seconds`, less than a millisecond.

    The event loop's timers cannot: libev waits in epoll, whose timeout counts whole
    milliseconds, so `gevent.sleep(0.0002)` returns after about 1.1 ms, and the poller that
    asked for 0.5 ms pauses paused 1.1 ms. A thread of the hub's pool sleeps instead, and the
    hub wakes when it is done (about 0.3 ms for 0.2, some 0.1 ms of CPU).
    """
    gevent.get_hub().threadpool.spawn(_os_sleep, seconds).get()


def _waiting_while_busy(busy_timeout: float) -> Callable[[Callable[[], object]], None]:
    """Run a DBAPI call, retrying while another process holds SQLite's write lock.

    The pauses yield to the hub (`_pause`), so the process serves its other requests meanwhile.
    Of the greenlets that found the lock taken, only the first polls SQLite, with short pauses,
    so it takes the lock soon after it is freed; the others wait for it. Each greenlet backing
    off on its own let some lose every race for seconds. Once the poller has the lock it lets
    all the waiters go at once, in the order they came, and each writes in turn (a waiter that
    finds the lock taken again waits for the next poller). Let go one at a time, each waiter
    cost a turn of the busy hub, tens of ms at 50 concurrent requests: most of the web's
    requests were in line, behind consumers that held the lock a small part of the time. Past
    `busy_timeout` the error is raised as SQLite would have raised it, and the request answers
    503 (see app/api.py).
    """
    line = _BusyLine()

    def attempt(call: Callable[[], object]) -> bool:
        try:
            call()
            return True
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _SQLITE_BUSY_CODES:
                raise
            return False

    def run(call: Callable[[], object]) -> None:
        if attempt(call):
            return
        deadline = time.monotonic() + busy_timeout
        while line.polling:
            if not line.wait_for_poller(deadline - time.monotonic()):
                call()  # out of time: one last try raises SQLite's own error if still busy
                return
            if attempt(call):
                return
        line.polling = True
        try:
            pause = _FIRST_PAUSE
            while not attempt(call):
                left = deadline - time.monotonic()
                if left <= 0:
                    call()
                    return
                _pause(min(pause, left))
                pause = min(pause * 2, _LONGEST_PAUSE)
        finally:
            line.let_waiters_go()

    return run


class _BusyLine:
    """The greenlets of one engine waiting for SQLite's write lock: one polls, the others wait
    for it (woken in the order they began to wait)."""

    def __init__(self) -> None:
        self.polling = False
        self._done = gevent.event.Event()

    def wait_for_poller(self, timeout: float) -> bool:
        return timeout > 0 and self._done.wait(timeout)

    def let_waiters_go(self) -> None:
        self.polling = False
        done, self._done = self._done, gevent.event.Event()
        done.set()


def _wait_while_busy(engine: Engine, busy_timeout: float) -> None:
    run = _waiting_while_busy(busy_timeout)

    def do_execute(cursor: Any, statement: str, parameters: Any, _context: Any) -> bool:
        run(lambda: cursor.execute(statement, parameters))
        return True  # executed: SQLAlchemy must not run it again

    def do_executemany(cursor: Any, statement: str, parameters: Any, _context: Any) -> bool:
        run(lambda: cursor.executemany(statement, parameters))
        return True

    def do_execute_no_params(cursor: Any, statement: str, _context: Any) -> bool:
        run(lambda: cursor.execute(statement))
        return True

    event.listen(engine, "do_execute", do_execute)
    event.listen(engine, "do_executemany", do_executemany)
    event.listen(engine, "do_execute_no_params", do_execute_no_params)


def compact_json(value: Any) -> str:
    """JSON without spaces: how JSON columns are stored, and how messages go on the wire. An
    event's stored body is then the message the relay publishes, byte for byte."""
    return json.dumps(value, separators=(",", ":"))


def make_engine(
    database_url: str,
    *,
    busy_timeout: float = 5.0,
    socket_timeout: float | None = None,
    **kwargs: Any,
) -> Engine:
    """An engine for `database_url`. `busy_timeout`: SQLite's wait for the write lock.
    `socket_timeout`: PostgreSQL's wait to connect or for any reply (None: for ever, as the
    migrations want); past it the connection is lost, as if reset."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = sqlite_file(url)
        if database and os.path.dirname(database):
            os.makedirs(os.path.dirname(database), exist_ok=True)
        engine = create_engine(url, json_serializer=compact_json, **kwargs)
        event.listen(engine, "connect", _sqlite_configurer)
        _wait_while_busy(engine, busy_timeout)
        return engine
    if url.drivername == "postgresql":
        # A bare postgresql:// URL gets pg8000: it is pure Python, so under gevent its socket
        # waits yield to the hub (SQLAlchemy's own default driver would block it).
        url = url.set(drivername="postgresql+pg8000")
    if socket_timeout is not None and url.drivername == "postgresql+pg8000":
        kwargs["connect_args"] = {**kwargs.get("connect_args", {}), "timeout": socket_timeout}
    engine = create_engine(url, pool_pre_ping=True, json_serializer=compact_json, **kwargs)
    if url.drivername == "postgresql+pg8000":
        event.listen(engine, "do_connect", _connect_reporting_socket_errors)
    return engine


def _convert_paramstyle_once(style: str, query: str, args: Any) -> tuple[str, Any]:
    """pg8000's `convert_paramstyle`, each statement's SQL rewritten once, not on every execute.

    pg8000 turns a statement's placeholders into PostgreSQL's (`%s` -> `$1`) with a scanner
    that walks the SQL one character at a time in Python, whenever a cursor executes: the
    largest single item in a cProfile of registrations on PostgreSQL. SQLAlchemy sends the same
    few statements over and over, and for the positional styles (SQLAlchemy's pg8000 dialect
    uses "format") the rewritten SQL depends on the SQL alone and the parameters go through
    unchanged, so the rewrite is kept per statement. In-process (WebTest, 1,000 insert-only
    registrations a round, three rounds alternating): 2.38-2.50 ms of CPU a registration
    against 2.77-2.91.
    """
    if style in ("numeric", "qmark", "format"):
        return _rewritten_sql(style, query), args
    converted: tuple[str, Any] = _pg8000_convert_paramstyle(style, query, args)
    return converted


@functools.lru_cache(maxsize=1024)
def _rewritten_sql(style: str, query: str) -> str:
    # A statement with an expanding IN is a new string per list length: the bound keeps them.
    rewritten: str = _pg8000_convert_paramstyle(style, query, ())[0]
    return rewritten


_pg8000_convert_paramstyle = pg8000.legacy.convert_paramstyle
# The name pg8000.legacy.Cursor.execute looks up (the cursor of `_Pg8000Connection`).
pg8000.legacy.convert_paramstyle = _convert_paramstyle_once


class _Pg8000Connection(pg8000.legacy.Connection):  # the class pg8000.connect() returns
    """pg8000's connection, with a socket error while it reads a reply raised as the driver's
    InterfaceError("network error"), as pg8000 already raises its other socket errors.

    pg8000 reads the first bytes of a reply outside its own `except OSError`: a connection reset
    there (PostgreSQL restarting under load) escaped as a bare ConnectionResetError, which
    SQLAlchemy does not wrap, and the request answered 500. Every reply is read in
    `handle_messages`, whoever asked: a statement, pg8000's own COMMIT and ROLLBACK, the pool's
    pre-ping. As the driver's InterfaceError, SQLAlchemy treats it as the lost connection it is:
    the connection is invalidated, the views answer 503 with Retry-After, and a pre-ping that
    meets it gives the request a new connection.
    """

    def handle_messages(self, context: Any) -> None:
        try:
            super().handle_messages(context)
        except OSError as exc:
            raise pg8000.exceptions.InterfaceError(f"network error: {exc!r}") from exc


def _connect_reporting_socket_errors(
    _dialect: Dialect, _record: Any, cargs: Any, cparams: Any
) -> Any:
    """Open a `_Pg8000Connection`, as pg8000.connect() would open its own.

    pg8000 lets a socket error while it opens a connection escape as a bare OSError (a server
    shutting down resets the connection mid-handshake). Raised as the driver's own
    InterfaceError instead, SQLAlchemy wraps it like every other lost connection, and the views
    answer 503 with Retry-After rather than 500."""
    try:
        return _Pg8000Connection(*cargs, **cparams)
    except OSError as exc:
        raise pg8000.exceptions.InterfaceError(f"cannot connect: {exc!r}") from exc


def pool_options(database_url: str, *, size: int, timeout: float) -> dict[str, Any]:
    """Pool arguments for a web process: `size` connections, none beyond, `timeout` to wait.

    Sized to the greenlet pool by default, so no request waits for a connection; when an
    operator sizes it lower (PostgreSQL's max_connections), a request that waits past `timeout`
    gets sqlalchemy.exc.TimeoutError, which the views answer with 503 and Retry-After.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and sqlite_file(url) is None:
        return {}  # an in-memory database is one connection, not a queue pool
    return {"pool_size": size, "max_overflow": 0, "pool_timeout": timeout}


_Mapped = TypeVar("_Mapped", bound=Base)


def detached(cls: type[_Mapped], **values: Any) -> _Mapped:
    """An object of the mapped class `cls` holding `values` as if loaded, in no session: for
    rows written with Core (a registration's), which the response and the dispatcher read.

    The ORM's constructor records every attribute it sets as a change for a unit of work these
    rows never go through: 39 us for a registration's user and two notifications, 8 this way
    (timeit). An attribute changed afterwards is recorded as usual.
    """
    if not cls.__mapper__.configured:  # the first request may come before any query
        configure_mappers()
    instance: _Mapped = manager_of_class(cls).new_instance()
    instance.__dict__.update(values)
    return instance


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session for one unit of work outside a request (a message, a relay batch)."""
    session = factory()
    try:
        yield session
    finally:
        session.close()
