"""What an SMS may cost: budgets per time window, counted in the registration's transaction.

Anyone can register any valid number, so without a budget anyone can make the service send
texts at its expense (SMS pumping, toll fraud). The operator sets up to three budgets, each a
fixed window counted in the database (app/counters.py) by the same transaction that writes the
registration, so no extra transaction is spent and a refused registration counts nothing:

    SMS_BUDGET_GLOBAL       all numbers together
    SMS_BUDGET_PER_COUNTRY  each country calling code (+44, +1, ...) on its own
    SMS_BUDGET_PER_NUMBER   each number on its own (registrations and resends)

An SMS over a budget is not refused: its row is written `held`, the user is told, and an
operator releases held SMS when they choose (`python -m services.held release`). No Flask here.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import phonenumbers
from sqlalchemy.engine import Connection

from app.config import Settings
from app.counters import Rate, count_hit, window

HELD = "held"


@dataclass(frozen=True)
class SmsBudgets:
    every_number: Rate | None = None
    per_country: Rate | None = None
    per_number: Rate | None = None

    @property
    def enabled(self) -> bool:
        return any((self.every_number, self.per_country, self.per_number))


@functools.lru_cache(maxsize=8)
def _budgets(every_number: str, per_country: str, per_number: str) -> SmsBudgets:
    def rate(text: str, setting: str) -> Rate | None:
        return Rate.parse(text, setting=setting) if text.strip() else None

    return SmsBudgets(
        rate(every_number, "SMS_BUDGET_GLOBAL"),
        rate(per_country, "SMS_BUDGET_PER_COUNTRY"),
        rate(per_number, "SMS_BUDGET_PER_NUMBER"),
    )


def sms_budgets(settings: Settings) -> SmsBudgets:
    return _budgets(
        settings.sms_budget_global, settings.sms_budget_per_country, settings.sms_budget_per_number
    )


def charge_sms(connection: Connection, budgets: SmsBudgets, phone: str) -> str | None:
    """Count one SMS to `phone` (E.164) against every budget, in the caller's transaction.

    Returns why the SMS must be held (the first budget it is over), or None to send it.
    """
    if not budgets.enabled:
        return None
    now = time.time()
    calling_code = phonenumbers.parse(phone).country_code
    checks = (
        ("sms:all", budgets.every_number, "for all numbers"),
        (f"sms:+{calling_code}", budgets.per_country, f"for +{calling_code} numbers"),
        (f"sms:{phone}", budgets.per_number, "for this number"),
    )
    reason = None
    for bucket, rate, what in checks:
        if rate is None:
            continue
        start, end = window(rate, now)
        if count_hit(connection, bucket, start, end, now) > rate.limit and reason is None:
            reason = (
                f"held: the SMS budget {what} ({rate}) is used up; the message waits until "
                "an operator releases it"
            )
    return reason
