"""Unique, valid users for the load: one per request, recomputable from its index.

The load generator builds the user for index i; the bench parent rebuilds the same email address
and phone number from i to find the messages the sinks received for that request. Phone numbers
are real-looking US numbers (`+1 AAA 253 LLLL`) that `phonenumbers.is_valid_number` accepts:
the area code turns fastest, so consecutive users differ in area code, then the line number, then
the exchange. The `nonce` keeps two runs against the same database apart.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import phonenumbers

EMAIL_DOMAIN = "example.com"
# A few exchanges next to 253; an area code is used only if every one of them is valid in it.
EXCHANGES: tuple[int, ...] = (253, 254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266)
LINES_PER_EXCHANGE = 10_000


@functools.cache
def area_codes() -> tuple[int, ...]:
    """US area codes in which phonenumbers' metadata accepts every exchange we use, ascending.

    Other NANP members (Canada, the Caribbean) share +1, and some US area codes have only some
    exchanges assigned, so each pair is checked once (about 10,000 parses, a fraction of a second).
    """
    valid = []
    for area in range(200, 1000):
        numbers = [phonenumbers.parse(f"+1{area}{exchange}0000") for exchange in EXCHANGES]
        if all(
            phonenumbers.region_code_for_number(number) == "US"
            and phonenumbers.is_valid_number(number)
            for number in numbers
        ):
            valid.append(area)
    return tuple(valid)


def capacity() -> int:
    return len(area_codes()) * LINES_PER_EXCHANGE * len(EXCHANGES)


@dataclass(frozen=True)
class UserFactory:
    nonce: str  # lowercase letters and digits: part of every email address
    offset: int = 0  # where this run starts in the phone number space

    def email(self, index: int) -> str:
        return f"bench.{self.nonce}.{index}@{EMAIL_DOMAIN}"

    def phone(self, index: int) -> str:
        areas = area_codes()
        slot = (self.offset + index) % capacity()
        slot, area_slot = divmod(slot, len(areas))
        exchange_slot, line = divmod(slot, LINES_PER_EXCHANGE)
        return f"+1{areas[area_slot]}{EXCHANGES[exchange_slot]}{line:04d}"

    def user(self, index: int) -> dict[str, str]:
        return {
            "name": f"Bench User {index}",
            "email": self.email(index),
            "phone": self.phone(index),
        }
