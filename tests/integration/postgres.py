"""A private PostgreSQL cluster for the tests (devstack's, started and removed per use), and a
proxy in front of it that resets a client's connection on cue."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from sqlalchemy.engine import make_url

from devstack.postgres import PostgresServer, postgres_bin

__all__ = ["ResettingProxy", "postgres_bin", "private_cluster"]


@contextmanager
def private_cluster() -> Iterator[str]:
    """Start a throwaway cluster; yield its SQLAlchemy URL; stop and remove it."""
    server = PostgresServer()
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


class ResettingProxy:
    """A TCP proxy to the server at `target_url` that resets a client's connection (an RST, as
    the kernel sends when a server process goes away with unread bytes) as soon as the client
    sends bytes containing the marker given to `reset_on`: those bytes never reach the server,
    and the client, which has sent its request, finds the reset while it reads the reply.

    Use it as a context manager; `url` is `target_url` with the proxy's port.
    """

    def __init__(self, target_url: str) -> None:
        self._target = make_url(target_url)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self.resets = 0

    @property
    def url(self) -> str:
        port = self._listener.getsockname()[1]
        return self._target.set(port=port).render_as_string(hide_password=False)

    def reset_on(self, marker: bytes) -> None:
        """Reset the next connection whose client sends `marker` (once)."""
        with self._lock:
            self._marker = marker

    def __enter__(self) -> ResettingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed by __exit__
            server = socket.create_connection((self._target.host, self._target.port))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._pump, args=(source, sink, source is client), daemon=True
                ).start()

    def _takes_marker(self, data: bytes) -> bool:
        with self._lock:
            if self._marker is None or self._marker not in data:
                return False
            self._marker = None
            self.resets += 1
            return True

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        with suppress(OSError):  # either end closed: this direction is done
            while data := source.recv(65536):
                if from_client and self._takes_marker(data):
                    # Linger on, for zero seconds: close() sends an RST instead of a FIN.
                    source.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    source.close()
                    break
                sink.sendall(data)
        for end in (source, sink):
            with suppress(OSError):  # closed already
                end.shutdown(socket.SHUT_RDWR)  # wakes the pump reading the other way
            end.close()
