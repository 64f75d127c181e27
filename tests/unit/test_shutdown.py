"""The two-step stop every gevent process uses: the first signal is graceful, the second final."""

from __future__ import annotations

from tests.fresh_process import run_python

PROBE = """
import os, signal
import gevent
from app.shutdown import on_stop_signals

on_stop_signals(lambda: print("graceful", flush=True))
os.kill(os.getpid(), signal.SIGTERM)
gevent.sleep(0.5)
print("still running", flush=True)
os.kill(os.getpid(), signal.SIGINT)
gevent.sleep(5)
print("not exited", flush=True)
"""


def test_first_signal_is_graceful_the_second_exits_at_once() -> None:
    # A child process: the second signal ends the process it arrives in.
    result = run_python(PROBE, check=False)
    assert result.stdout.splitlines() == ["graceful", "still running"]
    assert result.returncode == 1
