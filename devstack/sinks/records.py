"""The record file the sinks write and everyone else reads: one JSON object per line.

A sink appends one line per accepted message and flushes it at once, so another process (a test,
the benchmark) can read the file while the sink is still running. A reader may therefore see the
last line half written; `read_records` leaves such a line out instead of failing.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any, TextIO

Record = dict[str, Any]


class RecordFile:
    """Append-only JSON-lines writer, safe to share between threads (or greenlets).

    The file is opened on the first append and reopened after close(), so a sink can be stopped
    and started again on the same path.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: TextIO | None = None

    def append(self, record: Record) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Append mode: a sink restarted on a file adds to what earlier runs recorded.
                self._file = self.path.open("a", encoding="utf-8")
            # One write and one flush per line: readers never wait for a buffer to fill.
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_records(path: str | Path) -> list[Record]:
    """Every complete record in the file, oldest first; [] when the file does not exist yet."""
    try:
        # Bytes, not text: a half-written line may end inside a multi-byte character.
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    # After the last newline there is either nothing or a line the writer has not finished.
    complete, unfinished = lines[:-1], lines[-1]
    records = [_parse_line(line, path, number) for number, line in enumerate(complete, 1) if line]
    if unfinished:
        # Unparseable here means "still being written", not corrupt: leave it for the next read.
        with contextlib.suppress(ValueError):
            records.append(_parse_line(unfinished, path, len(lines)))
    return records


def _parse_line(line: bytes, path: str | Path, number: int) -> Record:
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}:{number}: not a JSON record: {exc}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{number}: record is not a JSON object")
    return record
