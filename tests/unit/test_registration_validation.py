import pytest

from app.registration import InvalidRegistration, validate_registration

VALID = {"name": "Ada Lovelace", "email": "Ada@Example.com", "phone": "+44 7911 123456"}


def test_valid_input_is_normalised():
    registration = validate_registration(VALID)
    assert registration.name == "Ada Lovelace"
    assert registration.email == "Ada@example.com"  # the domain part is lower-cased
    assert registration.phone == "+447911123456"


def test_national_number_is_read_in_the_default_region():
    registration = validate_registration({**VALID, "phone": "(650) 253-0000"})
    assert registration.phone == "+16502530000"


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("name", "", "Enter your name"),
        ("name", "x" * 201, "at most 200"),
        ("name", "bad\x00name", "printable"),
        ("email", "", "Enter your email"),
        ("email", "no-at-sign", "@-sign"),
        ("email", "a@b", "after the @-sign"),
        ("phone", "", "Enter your mobile"),
        ("phone", "not a number", "country code"),
        ("phone", "+1 555", "not a valid phone"),
    ],
)
def test_each_bad_field_is_named(field, value, fragment):
    with pytest.raises(InvalidRegistration) as caught:
        validate_registration({**VALID, field: value})
    assert list(caught.value.fields) == [field]
    assert fragment in caught.value.fields[field]


def test_every_missing_field_is_reported_at_once():
    with pytest.raises(InvalidRegistration) as caught:
        validate_registration({})
    assert set(caught.value.fields) == {"name", "email", "phone"}


@pytest.mark.parametrize("value", [None, 12, ["a"], {"a": 1}, True])
def test_non_string_values_are_field_errors_not_crashes(value):
    with pytest.raises(InvalidRegistration) as caught:
        validate_registration({"name": value, "email": value, "phone": value})
    assert set(caught.value.fields) == {"name", "email", "phone"}
