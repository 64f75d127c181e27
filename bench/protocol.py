"""What the bench parent and its load generator child say to each other: one JSON line each way.

The parent writes a `LoadSpec`, the child runs it and answers with a `LoadResult` holding every
request it made (warm-up included, so the parent knows every user whose messages to wait for);
the parent decides which fall in the measured window.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

NOOP = "noop"
NOOP_PATH = "/noop"
USERS_PATH = "/api/users"


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    mode: str  # "noop", or a registration mode passed as ?mode=
    concurrency: int
    warmup_s: float
    duration_s: float  # measured seconds; ignored when `requests` is set
    first_index: int  # user indices first_index, first_index + 1, ... (unique in the run)
    nonce: str
    offset: int
    requests: int | None = None  # a burst: exactly this many, as fast as `concurrency` allows
    rate: float | None = None  # paced: start at most this many requests a second (open loop)
    timeout_s: float = 30.0

    def to_line(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadSpec:
        return cls(**data)


@dataclass
class LoadResult:
    measure_from: float  # time.time() when the measured window opened
    measure_until: float  # ... and closed (for a burst: when the last response arrived)
    indices_used: int
    start: list[float] = field(default_factory=list)  # time.time() at each request's start
    latency_ms: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)  # HTTP status; 0 when the request failed
    index: list[int] = field(default_factory=list)  # user index; -1 for the no-op endpoint
    # Server-Timing steps (db, publish, email, sms), one column each; None where absent.
    steps: dict[str, list[float | None]] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def to_line(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadResult:
        return cls(**data)

    def measured(self) -> list[int]:
        """Positions of the requests that started inside the measured window."""
        return [
            i
            for i, started in enumerate(self.start)
            if self.measure_from <= started < self.measure_until
        ]
