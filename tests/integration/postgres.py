"""A private PostgreSQL cluster for the tests (devstack's, started and removed per use)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from devstack.postgres import PostgresServer, postgres_bin

__all__ = ["postgres_bin", "private_cluster"]


@contextmanager
def private_cluster() -> Iterator[str]:
    """Start a throwaway cluster; yield its SQLAlchemy URL; stop and remove it."""
    server = PostgresServer()
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
