"""Property tests (Hypothesis): whatever arrives, each parser gives a value or its own clear
error, never another exception; and what it gives is well-formed.

Inputs include lone surrogates and control characters, which JSON (`"\\ud800"`) and URLs can
carry even though no keyboard types them.
"""

from __future__ import annotations

import ipaddress
import json
import string
from dataclasses import asdict

import phonenumbers
import pytest
from email_validator import validate_email
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.accounts import CODE_MAX_LENGTH, InvalidCode, normalize_code
from app.config import ConfigError
from app.jobs import EmailJob, Job, MalformedJob, SmsJob, decode_job, encode_job, job_to_dict
from app.logs import mask_email, mask_phone, redact
from app.ratelimit import Rate, client_address
from app.registration import DEFAULT_PHONE_REGION, InvalidRegistration, validate_registration
from app.verification import (
    SMS_CODE_DIGITS,
    InvalidToken,
    claim_matches,
    hash_sms_code,
    make_email_token,
    make_sms_code,
    read_email_token,
    sms_code_matches,
)

SECRET = "property-secret"
FIELDS = ("name", "email", "phone")
GOOD = {"name": "Ada", "email": "ada@example.com", "phone": "+44 7911 123456"}

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


def judged_bad_alone(data, field):
    """Whether `field` of `data` is refused when every other field is a good one."""
    try:
        validate_registration({**GOOD, field: data.get(field)})
    except InvalidRegistration as exc:
        assert set(exc.fields) == {field}
        return True
    return False


def same_number(a, b, region=None):
    x, y = phonenumbers.parse(a, region), phonenumbers.parse(b, region)
    return (x.country_code, x.national_number) == (y.country_code, y.national_number)


@PROPERTY
@given(registration_data)
@example({"name": "Ada", "email": "ada@example.com", "phone": "+44 7911 123456"})
@example({"name": "\ud800", "email": "a\ud800@example.com", "phone": "+1\ud800"})
@example({"name": "Ada", "email": "ada@exa\x00mple.com", "phone": "+1 650 253 0000\x00"})
def test_validation_gives_a_registration_or_names_the_bad_fields(data):
    try:
        registration = validate_registration(data)
    except InvalidRegistration as exc:
        # Each field is judged on its own: the refusal names exactly the fields that are
        # refused alone, whatever the others hold, and says something about each.
        assert set(exc.fields) == {f for f in FIELDS if judged_bad_alone(data, f)}
        assert all(message.strip() for message in exc.fields.values())
        return
    assert not any(judged_bad_alone(data, f) for f in FIELDS)
    # The name is what was typed, trimmed.
    assert registration.name == data["name"].strip()
    assert registration.name.isprintable() and len(registration.name) <= 200
    # The email is in normal form: normalising it again changes nothing.
    assert validate_email(registration.email, check_deliverability=False).normalized == (
        registration.email
    )
    assert registration.email.count("@") == 1
    # The phone is E.164 (+, then digits only), reads back as itself without a default region,
    # and is the number that was typed.
    assert registration.phone.startswith("+") and set(registration.phone[1:]) <= set(string.digits)
    e164 = phonenumbers.format_number(
        phonenumbers.parse(registration.phone, None), phonenumbers.PhoneNumberFormat.E164
    )
    assert e164 == registration.phone
    assert same_number(data["phone"].strip(), registration.phone, DEFAULT_PHONE_REGION)
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
    # Only a version-1 JSON object whose fields are the job's gets through, and the job is
    # exactly what it said.
    data = json.loads(body)
    assert data["v"] == 1
    assert {key: data[key] for key in job_to_dict(job)} == job_to_dict(job)
    assert decode_job(encode_job(job)) == job


non_empty = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40)
jobs: st.SearchStrategy[Job] = st.builds(
    EmailJob, notification_id=non_empty, to=non_empty, subject=non_empty, text=non_empty
) | st.builds(SmsJob, notification_id=non_empty, to=non_empty, body=non_empty)

JOB_KEYS = ["v", "kind", "notification_id", "to", "subject", "text", "body"]
# Objects that look like jobs, and real jobs with a few fields changed or dropped: random
# objects alone almost never get past the decoder, so its "accepted" branch would go untested.
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
) | st.builds(
    lambda job, changes, dropped: {
        k: v for k, v in {**job_to_dict(job), **changes}.items() if k not in dropped
    },
    jobs,
    st.dictionaries(
        st.sampled_from(JOB_KEYS),
        st.sampled_from([1, 2, "1", 1.0, True, None, "", "email", "sms", "fax"]) | json_values,
        max_size=2,
    ),
    st.sets(st.sampled_from(JOB_KEYS), max_size=2),
)


@PROPERTY
@given(job_like)
def test_json_objects_decode_to_a_job_or_malformed(data):
    try:
        job = decode_job(json.dumps(data).encode())
    except MalformedJob:
        return
    # Only version 1 gets through, and the job is exactly what the object said.
    assert data["v"] == 1
    assert {key: data[key] for key in job_to_dict(job)} == job_to_dict(job)
    assert decode_job(encode_job(job)) == job


@pytest.mark.parametrize(
    "body",
    [
        b'{"v": 1, "kind": [], "notification_id": "n", "to": "t", "body": "b"}',
        b'{"v": 1, "kind": {}, "notification_id": "n", "to": "t", "body": "b"}',
        b'{"v": true, "kind": "sms", "notification_id": "n", "to": "t", "body": "b"}',
    ],
)
def test_known_malformed_jobs_are_malformed(body):
    with pytest.raises(MalformedJob):
        decode_job(body)


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
    assert claim.verification_id == user_id
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
    assert claim_matches(SECRET, claim, email)


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
    assert normalize_code(code) == code


@PROPERTY
@given(
    st.text(string.digits, min_size=6, max_size=6),
    st.lists(st.sampled_from(" -\t"), max_size=CODE_MAX_LENGTH - 6),
    st.data(),
)
def test_separators_anywhere_in_a_code_are_ignored(digits, separators, data):
    typed = list(digits)
    for separator in separators:
        typed.insert(data.draw(st.integers(0, len(typed))), separator)
    assert normalize_code("".join(typed)) == digits


@settings(PROPERTY, max_examples=50)
@given(st.text(string.hexdigits, min_size=32, max_size=32))
def test_sms_codes_are_six_digits_and_only_the_same_code_matches(user_id):
    code = make_sms_code()
    assert len(code) == SMS_CODE_DIGITS and set(code) <= set(string.digits)
    stored = hash_sms_code(SECRET, user_id, code)
    assert code not in stored
    assert sms_code_matches(SECRET, user_id, code, stored)
    other = f"{(int(code) + 1) % 1_000_000:06d}"
    assert not sms_code_matches(SECRET, user_id, other, stored)
    assert not sms_code_matches(SECRET, user_id[::-1] + "x", code, stored)


def test_sms_codes_use_every_digit_in_every_place():
    """A million codes, not fewer: leading zeros kept, no place fixed. Missing a digit in a
    place by chance over 500 codes has odds of about 10 * 0.9**500, i.e. never."""
    codes = [make_sms_code() for _ in range(500)]
    for place in range(SMS_CODE_DIGITS):
        assert {code[place] for code in codes} == set(string.digits), place


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
    assert Rate.parse(str(rate)) == rate


@PROPERTY
@given(st.integers(1, 10**9), st.sampled_from(["second", "minute", "hour", "day"]))
def test_a_rate_reads_back_from_its_own_text(limit, unit):
    rate = Rate.parse(f"{limit}/{unit}")
    assert rate.limit == limit and str(rate) == f"{limit}/{unit}"


@PROPERTY
@given(st.none() | any_text, st.none() | any_text, st.integers(0, 3))
def test_any_client_headers_give_a_bounded_address(remote, forwarded, proxies):
    address = client_address(remote, forwarded, proxies)
    assert 0 < len(address) <= 64
    # A bucket is its own address: counting it again lands in the same bucket.
    assert client_address(address, None, 0) == address
    # Trusting no proxy, nothing the client writes in X-Forwarded-For moves its bucket.
    assert client_address(remote, forwarded, 0) == client_address(remote, None, 0)


@PROPERTY
@given(st.ip_addresses(v=6))
def test_an_ipv6_client_is_counted_by_its_64(ip):
    bucket = client_address(str(ip), None, 0)
    if ip.ipv4_mapped is not None:
        assert bucket == str(ip.ipv4_mapped)
        return
    network = ipaddress.IPv6Network(bucket)
    assert network.prefixlen == 64 and ip in network


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
