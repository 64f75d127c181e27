"""A PostgreSQL server shutting down can reset a connection while pg8000 opens it; pg8000 lets
that escape as a bare OSError, which would be a 500. The engine reports it as the driver's
InterfaceError, which SQLAlchemy wraps like any lost connection (a 503 in the views).

The same for a reset while pg8000 reads a reply, later: tests/integration/test_postgres.py."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pg8000.dbapi
import pytest
import sqlalchemy.exc
from sqlalchemy.dialects.postgresql.pg8000 import PGDialect_pg8000

from app.db import _connect_reporting_socket_errors, make_engine


@contextmanager
def resetting_server() -> Iterator[int]:
    """A port whose server reads the client's first message, then resets the connection."""
    listener = socket.create_server(("127.0.0.1", 0))

    def reset_each() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed
            connection.recv(1024)  # the startup message: the client now waits for a reply
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()  # lingering zero seconds: an RST, not a FIN

    threading.Thread(target=reset_each, daemon=True).start()
    with listener:
        yield listener.getsockname()[1]


def test_a_reset_while_connecting_is_the_drivers_interface_error():
    with (
        resetting_server() as port,
        pytest.raises(pg8000.dbapi.InterfaceError, match="cannot connect") as caught,
    ):
        params = {"user": "offload", "host": "127.0.0.1", "port": port, "timeout": 10}
        _connect_reporting_socket_errors(PGDialect_pg8000(), None, (), params)
    assert isinstance(caught.value.__cause__, ConnectionResetError)


@contextmanager
def silent_server() -> Iterator[int]:
    """A port whose server accepts, reads the client's first message, and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def hold_each() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed
            connection.recv(1024)
            held.append(connection)  # open, and silent

    threading.Thread(target=hold_each, daemon=True).start()
    with listener:
        yield listener.getsockname()[1]
    for connection in held:
        connection.close()


def test_a_server_that_never_answers_is_given_up_after_the_socket_timeout():
    """A PostgreSQL that accepts and then says nothing (hung, or a proxy without its upstream)
    held the connecting request for ever: pg8000 waits without a timeout unless given one."""
    outcome: list[BaseException | None] = []
    with silent_server() as port:
        engine = make_engine(
            f"postgresql://offload:secret@127.0.0.1:{port}/offload", socket_timeout=0.5
        )

        def connect() -> None:
            try:
                engine.connect().close()
                outcome.append(None)
            except BaseException as exc:  # reported below, in the test's thread
                outcome.append(exc)

        attempt = threading.Thread(target=connect, daemon=True)
        attempt.start()
        attempt.join(timeout=20)  # far above the 0.5 s: a bound on the test, not a measure
        engine.dispose()
    assert not attempt.is_alive(), "the connect still waits for a server that never answers"
    assert len(outcome) == 1 and isinstance(outcome[0], sqlalchemy.exc.DBAPIError), outcome
    assert isinstance(outcome[0].orig, pg8000.dbapi.InterfaceError)
