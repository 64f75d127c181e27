"""Rate limits without the app: reading a rate, the fixed-window counter, the client's address."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.config import ConfigError
from app.db import make_engine
from app.models import RateLimitCounter
from app.ratelimit import Rate, RateLimiter, client_address


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/minute", Rate(10, 60)),
        ("5/second", Rate(5, 1)),
        (" 100 / hours ", Rate(100, 3600)),
        ("1/day", Rate(1, 86400)),
    ],
)
def test_rates_are_read_from_settings(text, rate):
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["", "10", "ten/minute", "0/minute", "-1/minute", "10/fortnight"])
def test_malformed_rates_are_refused(text):
    with pytest.raises(ConfigError):
        Rate.parse(text)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_fixed_window_resets_and_says_when(database_url):
    engine = make_engine(database_url)
    clock = Clock(60 * 16_000 + 20.0)  # 20 s into a minute window
    limiter = RateLimiter(engine, {"r": Rate(2, 60)}, clock=clock)
    assert [limiter.hit("r", "a").allowed for _ in range(3)] == [True, True, False]
    assert limiter.hit("r", "a").retry_after == 40
    assert limiter.hit("r", "b").allowed
    clock.now += 40  # the next window
    decision = limiter.hit("r", "a")
    assert decision.allowed and decision.remaining == 1
    # The first hit of a new window swept the closed windows away.
    with engine.connect() as connection:
        rows = connection.execute(select(func.count()).select_from(RateLimitCounter)).scalar()
    assert rows == 1
    engine.dispose()


@pytest.mark.parametrize(
    ("remote", "forwarded", "proxies", "expected"),
    [
        ("203.0.113.7", None, 0, "203.0.113.7"),
        ("203.0.113.7", "192.0.2.1", 0, "203.0.113.7"),
        ("10.0.0.1", "192.0.2.1", 1, "192.0.2.1"),
        ("10.0.0.1", "6.6.6.6, 192.0.2.1, 10.0.0.2", 2, "192.0.2.1"),
        ("10.0.0.1", "192.0.2.1", 2, "10.0.0.1"),  # fewer hops than proxies: not trusted
        ("2001:db8:1:2:3:4:5:6", None, 0, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", None, 0, "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", None, 0, "192.0.2.1"),
        (None, None, 0, "unknown"),
        ("not an address", None, 0, "not an address"),
    ],
)
def test_client_address(remote, forwarded, proxies, expected):
    assert client_address(remote, forwarded, proxies) == expected
