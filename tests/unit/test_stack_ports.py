"""The dev stack's sinks on free ports: a port another program takes between the pick and the
bind must not stop the stack.

`StackConfig.on_free_ports` used to pick every port up front (bind port 0, read it, close),
then start each sink on its pick. Anything that binds meanwhile (an outgoing connection is
handed ephemeral ports from the same range) made the sink exit with "Address already in use",
and a CI run lost its integration stack that way. The sinks now pick their own port and report
it; the stack hands the web and the workers the ports the sinks really listen on.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import devstack.stack
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
