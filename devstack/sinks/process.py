"""Start a sink as a child process and wait until it listens: for tests, the benchmark and the
dev stack runner.

A child process keeps the sink out of the caller's concurrency model: the SMS gateway needs a
gevent-patched process, which a plain pytest process is not, and the benchmark should not share
a CPU-bound interpreter with the thing it measures.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Literal

from devstack import PROJECT_ROOT
from devstack.processes import terminate
from devstack.sinks.records import Record, read_records

SinkKind = Literal["smtp", "sms"]

# Where `python -m devstack.sinks` must be importable from, whatever the caller's cwd.
_READY_LINE = re.compile(rb"listening on (\S+):(\d+)\b")


def gateway_url(host: str, port: int) -> str:
    """The URL HttpSmsSender posts to on the SMS gateway sink at host:port."""
    return f"http://{host}:{port}/messages"


class SinkStartError(RuntimeError):
    """The sink process exited, or did not listen, before the startup deadline."""


class SinkProcess:
    """A running sink child process; stop() it, or use it as a context manager."""

    def __init__(
        self,
        kind: SinkKind,
        process: subprocess.Popen[bytes],
        host: str,
        port: int,
        record_path: Path,
        stderr: IO[bytes],
    ) -> None:
        self.kind = kind
        self.process = process
        self.host = host
        self.port = port
        self.record_path = record_path
        self._stderr = stderr
        self._stderr_at_exit: str | None = None

    @property
    def messages_url(self) -> str:
        """For the SMS gateway: the URL HttpSmsSender posts to."""
        return gateway_url(self.host, self.port)

    def records(self) -> list[Record]:
        return read_records(self.record_path)

    def stderr_text(self) -> str:
        """What the sink wrote to stderr so far (its error log)."""
        if self._stderr_at_exit is not None:
            return self._stderr_at_exit
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; returns the exit code."""
        terminate(self.process, timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._stderr_at_exit is None:
            self._stderr_at_exit = self.stderr_text()
            self._stderr.close()
        return self.process.returncode

    def __enter__(self) -> SinkProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_sink_process(
    kind: SinkKind,
    port: int,
    record_path: str | Path,
    delay_ms: float = 50,
    failure_rate: float = 0.0,
    timeout_rate: float = 0.0,
    python: str = sys.executable,
    *,
    host: str = "127.0.0.1",
    permanent_failure_rate: float = 0.0,
    hang_seconds: float | None = None,
    slow_prefix: str = "",
    slow_factor: float = 1.0,
    stderr_path: str | Path | None = None,
    startup_timeout: float = 15.0,
) -> SinkProcess:
    """Run `python -m devstack.sinks KIND ...` and return once its port accepts connections.

    port 0 lets the sink pick a free port; the returned `.port` is the real one. timeout_rate and
    hang_seconds apply to the SMS gateway only; permanent_failure_rate and the slow recipients
    (slow_prefix, slow_factor) to the SMTP sink only.
    The sink's stderr goes to `stderr_path` (appended) or to a temporary file; either way it is
    quoted in the SinkStartError raised when the sink dies or does not come up in time.
    """
    if kind not in ("smtp", "sms"):
        raise ValueError(f"unknown sink kind {kind!r}: expected 'smtp' or 'sms'")
    record_path = Path(record_path)
    command = [
        python,
        "-m",
        "devstack.sinks",
        kind,
        "--host",
        host,
        "--port",
        str(port),
        "--record",
        str(record_path),
        "--delay-ms",
        str(delay_ms),
        "--failure-rate",
        str(failure_rate),
    ]
    if kind == "sms":
        command += ["--timeout-rate", str(timeout_rate)]
        if hang_seconds is not None:
            command += ["--hang-seconds", str(hang_seconds)]
    else:
        if permanent_failure_rate:
            command += ["--permanent-failure-rate", str(permanent_failure_rate)]
        if slow_prefix:
            command += ["--slow-prefix", slow_prefix, "--slow-factor", str(slow_factor)]

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if part
    )
    stderr = _open_stderr_file(stderr_path)
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=env
    )
    sink = SinkProcess(kind, process, host, port, record_path, stderr)
    try:
        sink.port = _wait_until_listening(sink, startup_timeout)
    except BaseException:
        sink.stop()
        raise
    return sink


def _open_stderr_file(path: str | Path | None) -> IO[bytes]:
    # A file, not a pipe: nobody drains stderr while the sink runs, and a full pipe would block
    # the sink on its next log line. The SinkProcess owns the file and closes it in stop().
    if path is None:
        return tempfile.TemporaryFile()
    return open(path, "a+b")


def _wait_until_listening(sink: SinkProcess, timeout: float) -> int:
    """Read the child's `listening on HOST:PORT` line, then check the port takes a connection."""
    assert sink.process.stdout is not None
    stdout = sink.process.stdout.fileno()
    deadline = time.monotonic() + timeout
    output = b""
    while b"\n" not in output:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SinkStartError(
                f"{sink.kind} sink did not report listening within {timeout:g} s"
                f"{_stderr_excerpt(sink)}"
            )
        readable, _, _ = select.select([stdout], [], [], min(remaining, 0.5))
        if not readable:
            continue
        chunk = os.read(stdout, 4096)
        if not chunk:
            code = sink.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            raise SinkStartError(
                f"{sink.kind} sink exited with status {code} before listening"
                f"{_stderr_excerpt(sink)}"
            )
        output += chunk
    match = _READY_LINE.search(output)
    if match is None:
        raise SinkStartError(f"{sink.kind} sink printed {output!r}, not 'listening on HOST:PORT'")
    port = int(match.group(2))
    with socket.create_connection((sink.host, port), timeout=max(deadline - time.monotonic(), 1)):
        pass
    return port


def _stderr_excerpt(sink: SinkProcess) -> str:
    text = sink.stderr_text().strip()
    return f"; its stderr:\n{text[-4000:]}" if text else " (nothing on stderr)"
