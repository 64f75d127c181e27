"""Fixed-window counters in the database: the rate limits per client (app/ratelimit.py) and the
SMS budgets (app/smsbudget.py) count with the same upsert. No Flask here.

Each hit is one atomic upsert on `rate_limit_counters` (INSERT ... ON CONFLICT DO UPDATE SET
hits = hits + 1 RETURNING hits, on SQLite and PostgreSQL alike), so every process on every
machine counts against the same number.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete
from sqlalchemy.engine import Connection

from app.config import ConfigError
from app.db import upsert_insert
from app.models import RateLimitCounter

_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Rate:
    """At most `limit` hits per `period` seconds."""

    limit: int
    period: int

    @classmethod
    def parse(cls, text: str, *, setting: str = "rate") -> Rate:
        """Read "10/minute" (or /second, /hour, /day; a plural is fine too)."""
        count, _, unit = text.strip().partition("/")
        unit = unit.strip().lower().removesuffix("s")
        count = count.strip()
        if not (count.isascii() and count.isdigit()) or unit not in _PERIODS or int(count) < 1:
            raise ConfigError(
                f"{setting} must look like 10/minute (per second, minute, hour or day), "
                f"not {text!r}"
            )
        return cls(limit=int(count), period=_PERIODS[unit])

    def __str__(self) -> str:
        unit = next(name for name, seconds in _PERIODS.items() if seconds == self.period)
        return f"{self.limit}/{unit}"


def count_hit(connection: Connection, bucket: str, start: float, end: float, now: float) -> int:
    insert = upsert_insert(connection.dialect.name)
    counter = RateLimitCounter
    statement = (
        insert(counter)
        .values(bucket=bucket, window_start=_utc(start), window_end=_utc(end), hits=1)
        .on_conflict_do_update(
            index_elements=[counter.bucket, counter.window_start],
            set_={"hits": counter.hits + 1},
        )
        .returning(counter.hits)
    )
    hits: int = connection.execute(statement).scalar_one()
    if hits == 1:
        # The first hit of a window: a good moment to drop the windows that have closed, so the
        # table stays as small as the number of clients seen in the last period.
        connection.execute(delete(counter).where(counter.window_end <= _utc(now)))
    return hits


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def window(rate: Rate, now: float) -> tuple[float, float]:
    """The fixed window of `rate` that `now` (Unix seconds) falls in: (start, end)."""
    start = (now // rate.period) * rate.period
    return start, start + rate.period
