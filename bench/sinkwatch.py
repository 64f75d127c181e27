"""Follow a sink's record file as it grows, and index the records by recipient.

Each request's user has a unique email address and phone number, so `to` finds the message a
request caused. Reading only the new bytes on each poll keeps the cost flat while the file grows
to tens of thousands of lines during a run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class RecordTail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.received_at: dict[str, float] = {}  # recipient -> first received_at
        self.count = 0

    def poll(self) -> int:
        """Read what was appended since the last poll; return how many records were new."""
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return 0
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # after the last newline: empty, or a line being written
        new = 0
        for line in lines:
            if not line.strip():
                continue
            record: dict[str, Any] = json.loads(line)
            self.received_at.setdefault(str(record.get("to", "")), float(record["received_at"]))
            new += 1
        self.count += new
        return new

    def missing(self, recipients: Iterable[str]) -> list[str]:
        return [to for to in recipients if to not in self.received_at]


def wait_for_all(
    tails: dict[str, RecordTail],
    expected: dict[str, list[str]],
    *,
    timeout: float,
    interval: float = 0.1,
) -> dict[str, int]:
    """Poll until every expected recipient has a record, or the timeout; return what is missing."""
    deadline = time.monotonic() + timeout
    outstanding = {kind: list(recipients) for kind, recipients in expected.items()}
    while True:
        for kind, tail in tails.items():
            tail.poll()
            outstanding[kind] = tail.missing(outstanding.get(kind, []))
        if not any(outstanding.values()) or time.monotonic() >= deadline:
            return {kind: len(recipients) for kind, recipients in outstanding.items()}
        time.sleep(interval)
