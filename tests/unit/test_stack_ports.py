"""The dev stack's sinks on free ports: a port another program takes between the pick and the
bind must not stop the stack.

`StackConfig.on_free_ports` used to pick every port up front (bind port 0, read it, close),
then start each sink on its pick. Anything that binds meanwhile (an outgoing connection is
handed ephemeral ports from the same range) made the sink exit with "Address already in use",
and a CI run lost its integration stack that way. The sinks now pick their own port and report
it; the stack hands the web and the workers the ports the sinks really listen on.

Every port, picked ahead (the web's, RabbitMQ's, PostgreSQL's, the tests' own servers') or by
a sink as it binds, comes from below the kernel's ephemeral range (devstack/ports.py), which no
outgoing connection is handed a port from, and one process is never handed the same one twice:
a sink restarted on its port (the fault tests, the soaks) finds it free.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import devstack.ports
import devstack.stack
from devstack.ports import free_port
from devstack.stack import Stack, StackConfig


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_sinks_come_up_when_the_port_picked_for_them_is_taken_before_they_bind(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every port picked "free" is taken by the time it is used: the race, made certain.
    monkeypatch.setattr(devstack.stack, "free_port", lambda host="127.0.0.1": taken_port)
    # A broker "elsewhere", so the environment can be read without starting one.
    stack = Stack(StackConfig.on_free_ports(tmp_path, amqp_url="amqp://127.0.0.1:5672/"))
    try:
        stack.start_sinks()
        ports = {kind: sink.port for kind, sink in stack.sinks.items()}
        assert taken_port not in ports.values()
        environment = stack.environment()
        assert environment["SMTP_PORT"] == str(ports["smtp"])
        assert environment["SMS_GATEWAY_URL"] == f"http://127.0.0.1:{ports['sms']}/messages"
        with socket.create_connection(("127.0.0.1", ports["smtp"]), timeout=5) as smtp:
            assert smtp.recv(3) == b"220"
    finally:
        for sink in stack.sinks.values():
            sink.stop()


def test_ports_picked_ahead_are_ones_no_outgoing_connection_is_handed() -> None:
    # A port from the ephemeral range may be handed to any outgoing connection (the broker's
    # node to epmd, a test's client) between the pick and the bind; one below it may not.
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    picked = [free_port() for _ in range(50)]
    assert all(1024 <= port < lowest_ephemeral for port in picked), picked
    # A caller picks several before binding any (the stack: web, broker, its distribution).
    assert len(set(picked)) == len(picked)
    for port in picked[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", port))  # free when picked


def test_a_port_is_still_found_where_the_ephemeral_range_leaves_no_room_below_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(devstack.ports, "ephemeral_port_range", lambda: (1024, 65535))
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", port))


def test_a_sink_left_to_pick_its_port_takes_one_a_restart_can_bind_again(tmp_path: Path) -> None:
    # `restart_sink` (the fault tests, the soaks) stops a sink and starts its successor on the
    # same port, which the workers were configured with. A port from the ephemeral range may be
    # handed to an outgoing connection in between; one from below it may not.
    lowest_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    stack = Stack(StackConfig.on_free_ports(tmp_path, amqp_url="amqp://127.0.0.1:5672/"))
    try:
        stack.start_sinks()
        ports = {kind: sink.port for kind, sink in stack.sinks.items()}
        assert all(port < lowest_ephemeral for port in ports.values()), ports
        stack.restart_sink("sms", failure_rate=1.0)
        assert stack.sinks["sms"].port == ports["sms"]
    finally:
        for sink in stack.sinks.values():
            sink.stop()
