"""Event-loop stalls of the web, counted from its log while the bench runs.

The web runs with HUB_BLOCK_REPORT_MS set (app/hubwatch.py): gevent's monitor thread logs one
line each time the loop was held longer than that. `offload_hub_blocks_total` on /metrics would
count the same, but under gunicorn each worker keeps its own counter and a scrape reaches one
worker at random; every worker writes to the same log, so the log is the one count that covers
both server shapes alike.
"""

from __future__ import annotations

from pathlib import Path

# What app/hubwatch.py logs once per stall.
STALL_MARKER = b"the event loop was held for over"


class LogLineCounter:
    """How many lines holding `marker` a log file has had so far, reading only new bytes."""

    def __init__(self, path: Path, marker: bytes = STALL_MARKER) -> None:
        self.path = path
        self.marker = marker
        self._offset = 0
        self._partial = b""
        self._count = 0

    def count(self) -> int:
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return self._count
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # a line still being written is counted once it ends
        self._count += sum(1 for line in lines if self.marker in line)
        return self._count
