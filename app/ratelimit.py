"""Rate limits per client address: fixed windows counted in the database.

Each hit is one atomic upsert on `rate_limit_counters` (INSERT ... ON CONFLICT DO UPDATE
SET hits = hits + 1 RETURNING hits, on SQLite and PostgreSQL alike), so every gunicorn worker
and every web process on every machine counts against the same number; a counter in process
memory would give each worker its own allowance. A fixed window is the simplest scheme that is
exact under concurrency; its known weakness, up to twice the limit across a window boundary, is
acceptable for slowing down sign-up spam and code guessing.

    limiter = RateLimiter(engine, {"registrations": Rate.parse("10/minute")})
    decision = limiter.hit("registrations", "203.0.113.7")
    decision.allowed, decision.retry_after

Views use the `limit(name)` decorator, which raises `RateLimited` (a 429 with Retry-After);
each blueprint renders it its own way (JSON for the API, a page for the browser).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from flask import request
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import TooManyRequests

from app.config import ConfigError, Settings
from app.counters import Rate, count_hit

__all__ = ["Rate", "RateLimited", "RateLimiter", "client_address", "limit"]
from app.extension import offload

log = logging.getLogger(__name__)

REGISTRATIONS = "registrations"
VERIFICATIONS = "verifications"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int  # seconds until the window closes; 0 when allowed


class RateLimited(TooManyRequests):
    """A client went over a limit; the response is 429 with Retry-After."""

    def __init__(self, name: str, retry_after: int) -> None:
        super().__init__(
            f"Too many attempts from your address. Try again in {retry_after} seconds.",
            retry_after=retry_after,
        )
        self.limit_name = name
        self.seconds = retry_after


class RateLimiter:
    """Counts hits per (limit name, client) in fixed windows stored in the database."""

    def __init__(
        self,
        engine: Engine,
        rates: Mapping[str, Rate],
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"rate limits need SQLite or PostgreSQL, not {engine.dialect.name}; "
                "set RATE_LIMIT_ENABLED=false to run without them"
            )
        self.engine = engine
        self.rates = dict(rates)
        self.enabled = enabled
        self.clock = clock

    def hit(self, name: str, client: str) -> Decision:
        """Count one hit for `client` against the limit `name`, and say whether it may pass."""
        rate = self.rates[name]
        if not self.enabled:
            return Decision(True, rate.limit, rate.limit, 0)
        now = self.clock()
        start = math.floor(now / rate.period) * rate.period
        end = start + rate.period
        try:
            with self.engine.begin() as connection:
                hits = count_hit(connection, f"{name}:{client}"[:200], start, end, now)
        except SQLAlchemyError:
            # Fail open: a limit that cannot be counted must not take the service down with it.
            # The request goes on to the same database and fails there if it is really down.
            log.warning(
                "rate limit %s could not be counted; letting the request through",
                name,
                exc_info=True,
            )
            return Decision(True, rate.limit, 0, 0)
        if hits <= rate.limit:
            return Decision(True, rate.limit, rate.limit - hits, 0)
        return Decision(False, rate.limit, 0, max(1, math.ceil(end - now)))


def client_address(remote_addr: str | None, forwarded_for: str | None, trusted_proxies: int) -> str:
    """The address a limit is counted against.

    Behind `trusted_proxies` reverse proxies, the client is the address the outermost trusted
    proxy saw, i.e. the n-th entry from the right of X-Forwarded-For (what werkzeug's ProxyFix
    does); anything further left is whatever the client chose to send. IPv6 clients are counted
    by their /64, since one host usually holds a whole /64.
    """
    address = remote_addr or ""
    if trusted_proxies > 0 and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        if len(hops) >= trusted_proxies:
            address = hops[-trusted_proxies]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def make_rate_limiter(settings: Settings, engine: Engine) -> RateLimiter:
    rates = {
        REGISTRATIONS: Rate.parse(
            settings.rate_limit_registrations, setting="RATE_LIMIT_REGISTRATIONS"
        ),
        VERIFICATIONS: Rate.parse(
            settings.rate_limit_verifications, setting="RATE_LIMIT_VERIFICATIONS"
        ),
    }
    return RateLimiter(engine, rates, enabled=settings.rate_limit_enabled)


P = ParamSpec("P")
R = TypeVar("R")


def limit(
    name: str, *, methods: tuple[str, ...] = ("POST",)
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Count each request to the view against the limit `name`; over it, raise RateLimited."""

    def decorator(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def limited(*args: P.args, **kwargs: P.kwargs) -> R:
            if request.method in methods:
                extension = offload()
                limiter = extension.require_rate_limiter()
                if limiter.enabled:
                    client = client_address(
                        request.remote_addr,
                        request.headers.get("X-Forwarded-For"),
                        extension.settings.rate_limit_trusted_proxies,
                    )
                    decision = limiter.hit(name, client)
                    if not decision.allowed:
                        raise RateLimited(name, decision.retry_after)
            return view(*args, **kwargs)

        return limited

    return decorator
