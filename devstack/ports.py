"""Ports for the servers the dev stack, the benchmark and the tests start on this machine.

Each comes from below the kernel's ephemeral range. The kernel hands ports from that range to
every outgoing connection, so a port picked there (as binding port 0 does) may be taken by any
client before its server binds it, or between a server's stop and its successor's start on the
same port; a CI run lost a stack that way. Below the range, only another server's bind can take
one. One process is never handed the same port twice: callers pick several before binding any.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# The span just below the ephemeral range, clear of the low ports of the services a developer
# may run (PostgreSQL's 5432, RabbitMQ's 5672); one that is taken is refused by the bind.
MIN_PICKED_PORT = 10000
PICKED_PORT_SPAN = 12000
_handed_out: set[int] = set()


def ephemeral_port_range() -> tuple[int, int]:
    """The ports the kernel hands outgoing connections (Linux's default where it cannot say)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def bind_free_port(sock: socket.socket, host: str) -> int:
    """Bind `sock` to a free port below the ephemeral range and return it. Where the range
    leaves no room below it, the kernel picks, as for port 0."""
    lowest_ephemeral, _highest = ephemeral_port_range()
    first = max(MIN_PICKED_PORT, lowest_ephemeral - PICKED_PORT_SPAN)
    if first >= lowest_ephemeral:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
    candidates = [port for port in range(first, lowest_ephemeral) if port not in _handed_out]
    random.shuffle(candidates)
    for port in candidates:
        try:
            sock.bind((host, port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free port between {first} and {lowest_ephemeral - 1}")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, for a server started later (see the module's
    docstring for where it comes from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return bind_free_port(probe, host)


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port, as `bind_free_port` picks it),
    whose accepted connections send small writes at once: the sinks' servers write a reply in
    pieces, and with Nagle on a keep-alive client waits ~40 ms for the rest behind its own
    delayed ACK."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only when it does.
    listener = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if port:
            listener.bind(address)
        else:
            bind_free_port(listener, str(address[0]))  # a port a successor can bind again
        listener.listen(1024)
    except BaseException:
        listener.close()
        raise
    return listener
