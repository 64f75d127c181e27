"""Stopping the child processes the harness starts (web, workers, sinks, the bench's peers)."""

from __future__ import annotations

import signal
import subprocess
import threading

# After SIGKILL a process is gone as soon as the kernel reaps it; this only bounds the wait.
KILL_WAIT_SECONDS = 5.0


def terminate(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM (a clean stop: our processes drain, Celery does its warm shutdown), then SIGKILL
    if it has not exited within `timeout` seconds; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=KILL_WAIT_SECONDS)
    return process.returncode


def watch_until_stopped(
    processes: dict[str, subprocess.Popen[bytes]], stopping: threading.Event, label: str
) -> None:
    """Return once `stopping` is set (Ctrl-C) or any of `processes` has exited (it is set then)."""
    while not stopping.wait(0.5):
        for name, process in list(processes.items()):
            if process.poll() is not None:
                print(f"[{label}] {name} exited with {process.returncode}; stopping", flush=True)
                stopping.set()
    print(f"\n[{label}] stopping", flush=True)
