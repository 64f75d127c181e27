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
from sqlalchemy.dialects.postgresql.pg8000 import PGDialect_pg8000

from app.db import _connect_reporting_socket_errors


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
