"""Property tests (Hypothesis): whatever arrives, each parser gives a value or its own clear
error, never another exception; and what it gives is well-formed.

Inputs include lone surrogates and control characters, which JSON (`"\\ud800"`) and URLs can
carry even though no keyboard types them.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.accounts import InvalidCode, normalize_code
from app.config import ConfigError
from app.jobs import EmailJob, Job, MalformedJob, SmsJob, decode_job, encode_job
from app.logs import mask_email, mask_phone, redact
from app.ratelimit import Rate, client_address
from app.registration import InvalidRegistration, Registration, validate_registration
from app.verification import (
    EmailClaim,
    InvalidToken,
    hash_sms_code,
    make_email_token,
    make_sms_code,
    read_email_token,
    sms_code_matches,
)

SECRET = "property-secret"
FIELDS = ("name", "email", "phone")

# Applied to each test here rather than loaded as a profile, which would change every other
# Hypothesis test in the session too.
PROPERTY = settings(
    max_examples=200,
    deadline=None,  # email-validator's first call loads data; timing is not the property here
    suppress_health_check=[HealthCheck.too_slow],
)

# Every code point, surrogates and controls included.
any_char = st.characters(codec=None, exclude_categories=())
any_text = st.text(alphabet=any_char, max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=8,
)
plausible_phone = st.builds(
    lambda cc, rest, sep: "+" + cc + sep + sep.join(rest),
    st.sampled_from(["1", "44", "33", "49", "81", "91"]),
    st.lists(st.text(string.digits, min_size=1, max_size=4), min_size=1, max_size=4),
    st.sampled_from(["", " ", "-"]),
)
registration_values = st.one_of(
    json_values,
    st.emails(),
    plausible_phone,
    st.text(alphabet=string.printable, max_size=250),
)
registration_data = st.dictionaries(
    st.sampled_from([*FIELDS, "mode", "extra"]) | any_text, registration_values, max_size=6
)


# -- registration validation -----------------------------------------------------------------


@PROPERTY
@given(registration_data)
@example({"name": "Ada", "email": "ada@example.com", "phone": "+44 7911 123456"})
@example({"name": "\ud800", "email": "a\ud800@example.com", "phone": "+1\ud800"})
@example({"name": "Ada", "email": "ada@exa\x00mple.com", "phone": "+1 650 253 0000\x00"})
def test_validation_gives_a_registration_or_names_the_bad_fields(data):
    try:
        registration = validate_registration(data)
    except InvalidRegistration as exc:
        assert exc.fields and set(exc.fields) <= set(FIELDS)
        assert all(isinstance(m, str) and m for m in exc.fields.values())
        return
    assert isinstance(registration, Registration)
    assert registration.name and registration.name.isprintable() and len(registration.name) <= 200
    assert registration.email.count("@") == 1
    assert registration.phone.startswith("+") and registration.phone[1:].isdigit()
    # Everything that is stored can be encoded: no lone surrogate reaches the database.
    for value in asdict(registration).values():
        value.encode("utf-8")


@PROPERTY
@given(
    st.fixed_dictionaries(
        {"name": registration_values, "email": st.emails(), "phone": plausible_phone}
    )
)
def test_validation_is_a_fixed_point(data):
    """A clean registration validates to itself: normalising twice changes nothing."""
    try:
        registration = validate_registration(data)
    except InvalidRegistration:
        return
    assert validate_registration(asdict(registration)) == registration


# -- job decoding --------------------------------------------------------------------------------


@PROPERTY
@given(st.binary(max_size=300))
@example(b"\xff\xfe")
@example(b'{"v": 1, "kind": "sms", "notification_id": "n", "to": "+1", "body": "\\ud800"}')
def test_any_bytes_decode_to_a_job_or_malformed(body):
    try:
        job = decode_job(body)
    except MalformedJob as exc:
        assert str(exc)
        return
    assert isinstance(job, (EmailJob, SmsJob))


job_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, "1", None]),
        "kind": st.sampled_from(["email", "sms", "fax", None, 1]),
        "notification_id": json_values,
        "to": json_values,
        "subject": json_values,
        "text": json_values,
        "body": json_values,
    },
)


@PROPERTY
@given(job_like)
def test_json_objects_decode_to_a_job_or_malformed(data):
    try:
        job = decode_job(json.dumps(data).encode())
    except MalformedJob:
        return
    assert job.kind == data["kind"]
    assert encode_job(job) and decode_job(encode_job(job)) == job


non_empty = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)
jobs: st.SearchStrategy[Job] = st.builds(
    EmailJob, notification_id=non_empty, to=non_empty, subject=non_empty, text=non_empty
) | st.builds(SmsJob, notification_id=non_empty, to=non_empty, body=non_empty)


@PROPERTY
@given(jobs)
def test_every_job_survives_the_wire(job):
    assert decode_job(encode_job(job)) == job


# -- email tokens and SMS codes --------------------------------------------------------------------


@PROPERTY
@given(any_text | st.text(alphabet=string.ascii_letters + string.digits + "-_.", max_size=200))
@example("")
@example(".")
@example("e30.ZZZZZZ.ZZZZZZZZZZZZZZZZZZZZZZZZZZZ")
@example("\ud800")  # a lone surrogate: once a UnicodeEncodeError, now an invalid token
def test_any_text_reads_as_a_claim_or_invalid_token(token):
    try:
        claim = read_email_token(SECRET, token, max_age=3600)
    except InvalidToken:
        return
    # Only a token we signed gets here; random text must never be one.
    pytest.fail(f"unsigned text accepted as a token: {claim!r}")


@PROPERTY
@given(st.text(string.hexdigits, min_size=1, max_size=32), st.emails())
def test_a_genuine_token_reads_back(user_id, email):
    claim = read_email_token(SECRET, make_email_token(SECRET, user_id, email), max_age=3600)
    assert claim.user_id == user_id
    assert email not in make_email_token(SECRET, user_id, email)


@PROPERTY
@given(st.emails(), st.data())
def test_a_tampered_token_is_refused_or_means_the_same(email, data):
    token = make_email_token(SECRET, "a" * 32, email)
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_."))
    tampered = token[:position] + replacement + token[position + 1 :]
    try:
        claim = read_email_token(SECRET, tampered, max_age=3600)
    except InvalidToken:
        return
    # Base64 has slack bits: a change there can decode to the very same signed bytes.
    assert claim == read_email_token(SECRET, token, max_age=3600)
    assert isinstance(claim, EmailClaim)


@PROPERTY
@given(any_text)
@example(
    "\uff11\uff12\uff13\uff14\uff15\uff16"
)  # full-width digits are digits to str.isdigit(), not to us
@example("12 34-56")
def test_any_text_is_a_six_digit_code_or_invalid(text):
    try:
        code = normalize_code(text)
    except InvalidCode as exc:
        assert exc.fields == {"code": exc.message}
        return
    assert len(code) == 6 and set(code) <= set(string.digits)


@settings(PROPERTY, max_examples=50)
@given(st.text(string.hexdigits, min_size=32, max_size=32))
def test_sms_codes_are_six_digits_and_only_the_same_code_matches(user_id):
    code = make_sms_code()
    assert len(code) == 6 and code.isdigit()
    stored = hash_sms_code(SECRET, user_id, code)
    assert code not in stored
    assert sms_code_matches(SECRET, user_id, code, stored)
    other = f"{(int(code) + 1) % 1_000_000:06d}"
    assert not sms_code_matches(SECRET, user_id, other, stored)


# -- rate-limit inputs and log masking -------------------------------------------------------------


@PROPERTY
@given(any_text)
@example("10/minute")
@example("\u0661\u0660/minute")  # Arabic-Indic digits
def test_any_rate_text_is_a_rate_or_a_config_error(text):
    try:
        rate = Rate.parse(text)
    except ConfigError:
        return
    assert rate.limit >= 1 and rate.period in (1, 60, 3600, 86400)


@PROPERTY
@given(st.none() | any_text, st.none() | any_text, st.integers(0, 3))
def test_any_client_headers_give_a_bounded_address(remote, forwarded, proxies):
    address = client_address(remote, forwarded, proxies)
    assert isinstance(address, str) and 0 < len(address) <= 64


@PROPERTY
@given(
    st.emails().filter(lambda e: len(e.partition("@")[0]) > 1),
    st.text(string.digits, min_size=7, max_size=15).map(lambda d: "+" + d),
    st.text(string.digits, min_size=6, max_size=6),
)
def test_logs_mask_addresses_numbers_and_codes(email, phone, code):
    line = redact(f"to {email} and {phone}: Your Offload verification code is {code}.")
    assert email not in line and mask_email(email) in line
    assert phone not in line and mask_phone(phone) in line
    assert f"code is {code}" not in line
