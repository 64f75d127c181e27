"""Schemathesis hooks for Offload's document: how to generate its `phone` string format.

Loaded by schemathesis.toml (`hooks`), so a bare `schemathesis run .../api/openapi.json` from the
repository root uses it, and by tests/functional/test_contract.py. A `phone` is a number the
numbering plan of its country allows, as a person types it: JSON Schema cannot say that, so the
document names the format and this generates it, from libphonenumber's own example numbers
with their last digits varied, in the ways people write them.
"""

from __future__ import annotations

import phonenumbers
import schemathesis
from hypothesis import strategies as st

# Read without a +country code, a number is a US one (app.registration.DEFAULT_PHONE_REGION).
DEFAULT_REGION = "US"
STYLES = (
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.NATIONAL,
)


def _examples() -> list[phonenumbers.PhoneNumber]:
    examples = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        number = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        if number is not None:
            examples.append(number)
    return examples


EXAMPLES = _examples()


@st.composite
def phones(draw: st.DrawFn) -> str:
    example = draw(st.sampled_from(EXAMPLES))
    tail = draw(st.integers(min_value=0, max_value=999))
    national = example.national_number // 1000 * 1000 + tail
    number = phonenumbers.PhoneNumber(country_code=example.country_code, national_number=national)
    if not phonenumbers.is_valid_number(number):
        number = example
    style = draw(st.sampled_from(STYLES))
    region = phonenumbers.region_code_for_number(number)
    if style == phonenumbers.PhoneNumberFormat.NATIONAL and region != DEFAULT_REGION:
        style = phonenumbers.PhoneNumberFormat.INTERNATIONAL
    return phonenumbers.format_number(number, style)


schemathesis.openapi.format("phone", phones())
