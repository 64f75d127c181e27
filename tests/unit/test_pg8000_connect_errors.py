"""A PostgreSQL server shutting down can reset a connection while pg8000 opens it; pg8000 lets
that escape as a bare OSError, which would be a 500. The engine reports it as the driver's
InterfaceError, which SQLAlchemy wraps like any lost connection (a 503 in the views)."""

from __future__ import annotations

import pg8000.dbapi
import pytest
from sqlalchemy.dialects.postgresql.pg8000 import PGDialect_pg8000

from app.db import _connect_reporting_socket_errors


class ResettingDriver:
    InterfaceError = pg8000.dbapi.InterfaceError

    def connect(self, *_args, **_kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")


def test_a_reset_while_connecting_is_the_drivers_interface_error():
    dialect = PGDialect_pg8000()
    dialect.loaded_dbapi = ResettingDriver()
    with pytest.raises(pg8000.dbapi.InterfaceError, match="Connection reset") as caught:
        _connect_reporting_socket_errors(dialect, None, (), {})
    assert isinstance(caught.value.__cause__, ConnectionResetError)
