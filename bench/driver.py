"""The bench parent's handle on its load generator child (`python -m bench.loadgen`)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from bench.protocol import LoadResult, LoadSpec
from devstack import PROJECT_ROOT

# Past the spec's own time, how long a run may take before the child is presumed stuck.
GRACE_SECONDS = 60.0


class LoadGeneratorError(RuntimeError):
    """The load generator died, hung, or reported a failure; the message says which."""


class LoadGenerator:
    """A long-lived child: spawned once, runs one spec at a time, stopped by its PID."""

    def __init__(self, log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen"],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self._pending = b""

    def run(self, spec: LoadSpec) -> LoadResult:
        assert self.process.stdin is not None
        self.process.stdin.write(spec.to_line())
        self.process.stdin.flush()
        budget = spec.warmup_s + spec.duration_s + GRACE_SECONDS
        if spec.requests is not None:
            budget = GRACE_SECONDS + spec.requests * spec.timeout_s / max(spec.concurrency, 1)
        answer = json.loads(self._read_line(time.monotonic() + budget))
        if "failure" in answer:
            raise LoadGeneratorError(f"the load generator failed: {answer['failure']}")
        return LoadResult.from_dict(answer)

    def _read_line(self, deadline: float) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LoadGeneratorError(f"the load generator did not answer; see {self.log_path}")
            readable, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not readable:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                code = self.process.wait(timeout=5)
                raise LoadGeneratorError(
                    f"the load generator exited with {code}; see {self.log_path}"
                )
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(b'{"command": "quit"}\n')
                self.process.stdin.close()
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
