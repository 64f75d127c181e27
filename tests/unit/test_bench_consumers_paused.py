"""Queued mode with the consumers paused: the stack must be idle before they stop.

Until the consumers are stopped, what the last part left still reaches the work queues (the
relay publishes the events of an insert-only or inline registration once it is released). A
message that lands there after the consumers stopped waits for them, so the paused slice's own
wait for empty queues ran into its 60-s bound (seen in a `make bench` run: 4 emails ready), and
the slice started with leftovers anyway.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.parts import run_with_consumers_paused


class Stopped(Exception):
    """Ends the part after its first slice: only the order of what came before matters."""


class RecordingSession:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.options = SimpleNamespace(diagnostics_duration=1.0, concurrency=(1,))
        self.stack = SimpleNamespace(
            processes={"email": object(), "sms": object()},
            stop_process=lambda name: self.calls.append(f"stop {name}"),
            start_worker=lambda name: self.calls.append(f"start {name}"),
        )

    def wait_idle(self) -> None:
        self.calls.append("wait_idle")

    def run_slice(self, mode: str, concurrency: int, duration: float, **_: object) -> None:
        self.calls.append(f"slice {mode} c={concurrency}")
        raise Stopped


def test_the_stack_is_idle_before_the_consumers_stop():
    session = RecordingSession()
    with pytest.raises(Stopped):
        run_with_consumers_paused(session)  # type: ignore[arg-type]
    assert session.calls[:3] == ["wait_idle", "stop email", "stop sms"]
    assert session.calls[3:] == ["slice queued c=1", "start email", "start sms"]
