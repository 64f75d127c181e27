"""The publisher's connection gathers the frames of a turn of the hub into one write
(tests/integration/test_publisher_frames.py counts the sends against a real broker): here, what
happens to gathered frames when the connection closes or is lost before they go."""

from __future__ import annotations

from typing import Any

import gevent

from app.messaging import CoalescingGeventConnection


class RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def abort(self) -> None:
        self.calls.append("abort")


def connection_over(transport: RecordingTransport | None) -> CoalescingGeventConnection:
    # No broker: only the attributes the gathering reads.
    connection = object.__new__(CoalescingGeventConnection)
    connection._outgoing = []
    connection._transport = transport  # type: ignore[assignment]
    connection._opened = True
    return connection


def test_frames_of_one_turn_reach_the_transport_joined_in_order_after_the_turn() -> None:
    transport = RecordingTransport()
    connection = connection_over(transport)
    for frame in (b"method", b"header", b"body"):
        connection._adapter_emit_data(frame)
    assert transport.calls == []  # still this turn
    gevent.sleep(0)
    assert transport.calls == [("write", b"methodheaderbody")]
    connection._adapter_emit_data(b"next")
    gevent.sleep(0)
    assert transport.calls[-1] == ("write", b"next")


def test_a_close_sends_the_gathered_frames_before_the_transport_is_aborted() -> None:
    transport = RecordingTransport()
    connection = connection_over(transport)
    connection._adapter_emit_data(b"connection.close")
    connection._adapter_disconnect_stream()
    assert transport.calls == [("write", b"connection.close"), "abort"]
    gevent.sleep(0)  # the turn's callback finds nothing left to send
    assert transport.calls == [("write", b"connection.close"), "abort"]


def test_frames_for_a_connection_lost_meanwhile_are_dropped_quietly() -> None:
    connection = connection_over(RecordingTransport())
    connection._adapter_emit_data(b"frame")
    connection._transport = None  # pika lets go of a failed transport
    connection._emit_outgoing()  # what the turn's callback runs: it must not raise in the hub
    assert connection._outgoing == []
