"""Email-link and SMS-code verification, through the pages and the JSON API (WebTest)."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from urllib.parse import unquote

import pytest
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import update

from app.extension import offload
from app.models import User, utcnow
from app.verification import make_email_token

ADA = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 7911 123456"}
CSRF_FREE_FORM = {"code": "123456"}


def register(testapp, payload=None):
    """Through the API: the user, with the status token the API handed out."""
    body = testapp.post_json("/api/users?mode=serial", payload or ADA, status=201).json
    return {**body["user"], "status_token": body["status_token"]}


def register_in_browser(testapp, payload=None):
    """Through the form: this browser's session now opens the status page."""
    form = testapp.get("/register").forms["register-form"]
    for field, value in (payload or ADA).items():
        form[field] = value
    form["mode"] = "serial"
    form.submit(status=303)
    return testapp.get("/status/data").json["user"]


def verification_id(sessions, user):
    with sessions() as session:
        return session.get(User, user["id"]).email_verification_id


def link_from(email_sender):
    return re.search(r"http://testserver(/verify-email/\S+)", email_sender.sent[-1].text).group(1)


def code_from(sms_sender):
    return re.search(r"code is (\d{6})", sms_sender.sent[-1].body).group(1)


def wrong(code):
    return f"{(int(code) + 1) % 1_000_000:06d}"


def api_user(testapp, user):
    return testapp.get(f"/api/status/{user['status_token']}").json["user"]


def verify_phone_api(testapp, user, code, status=200):
    url = f"/api/status/{user['status_token']}/verify-phone"
    return testapp.post_json(url, {"code": code}, status=status)


# -- the email link ------------------------------------------------------------------------------


def test_email_link_confirms_the_address_once(testapp, email_sender):
    user = register(testapp)
    page = testapp.get(link_from(email_sender)).forms["verify-email-form"].submit()
    assert page.html.select_one("#verify-email-outcome")["data-outcome"] == "confirmed"
    assert "confirmed" in page.html.h1.text
    assert api_user(testapp, user)["email_verified"] is True
    status_link = page.html.select_one('a[href="/status"]')
    assert status_link is not None

    again = testapp.get(link_from(email_sender), status=409)
    assert again.html.select_one("#verify-email-outcome")["data-outcome"] == "used"
    assert "already used" in again.text


def test_expired_link_is_410_with_a_clear_page(app, testapp, email_sender, sessions):
    user = register(testapp)
    settings = offload(app).settings
    old = int(time.time()) - settings.verification_max_age - 60
    token = make_email_token(
        settings.secret_key, verification_id(sessions, user), user["email"], issued_at=old
    )
    page = testapp.get(f"/verify-email/{token}", status=410)
    assert page.html.select_one("#verify-email-outcome")["data-outcome"] == "expired"
    assert "expired" in page.html.h1.text
    assert api_user(testapp, user)["email_verified"] is False


@pytest.mark.parametrize(
    "token",
    [
        "nonsense",
        "a.b.c",
        "%00%ff",
        "x" * 3000,
        # Genuine shape, signed with another key: forged.
        make_email_token("another-secret", "0" * 32, "ada@example.com"),
    ],
)
def test_forged_or_malformed_link_is_400_never_500(testapp, token):
    register(testapp)
    page = testapp.get(f"/verify-email/{token}", status=400)
    assert page.html.select_one("#verify-email-outcome")["data-outcome"] == "invalid"


def test_link_for_another_address_is_refused(app, testapp, sessions):
    user = register(testapp)
    secret = offload(app).settings.secret_key
    token = make_email_token(secret, verification_id(sessions, user), "someone.else@example.com")
    testapp.get(f"/verify-email/{token}", status=400)
    assert api_user(testapp, user)["email_verified"] is False


def test_link_for_an_unknown_user_is_refused(app, testapp):
    secret = offload(app).settings.secret_key
    token = make_email_token(secret, "f" * 32, "ada@example.com")
    testapp.get(f"/verify-email/{token}", status=400)


def test_the_link_carries_no_email_address(testapp, email_sender):
    register(testapp)
    link = unquote(link_from(email_sender))
    # What anyone holding the link can read: its payload decodes without the key.
    _, claim = URLSafeTimedSerializer("not the key").loads_unsafe(link.rsplit("/", 1)[1])
    assert set(claim) == {"v", "e"}  # the verification id and a keyed digest of the address
    readable = f"{link} {json.dumps(claim)}"
    # Neither "@" nor the address can appear by chance in base64url or hex; a short part of it
    # could ("ada" turned up in a random token once, and failed this test).
    assert "@" not in readable
    assert "example.com" not in readable.lower()


# -- the SMS code on the status page ----------------------------------------------------------


def status_page(testapp):
    return testapp.get("/status")


def test_status_page_form_confirms_the_phone(testapp, sms_sender):
    register_in_browser(testapp)
    page = status_page(testapp)
    assert page.html.select_one("#phone-verification").text.strip() == "not confirmed yet"
    form = page.forms["verify-phone-form"]
    form["code"] = code_from(sms_sender)
    response = form.submit()
    assert response.status_int == 303
    confirmed = response.follow()
    assert confirmed.html.select_one("#phone-verification").text.strip() == "confirmed"
    assert confirmed.html.select_one("#phone-verification")["data-verified"] == "true"
    assert "Your phone number is confirmed." in confirmed.html.select_one(".notice").text
    assert "verify-phone-form" not in confirmed.forms
    assert testapp.get("/status/data").json["user"]["phone_verified"] is True


def test_code_typed_with_spaces_is_accepted(testapp, sms_sender):
    register_in_browser(testapp)
    code = code_from(sms_sender)
    form = status_page(testapp).forms["verify-phone-form"]
    form["code"] = f" {code[:3]} {code[3:]} "
    assert form.submit().status_int == 303


def test_wrong_code_shows_the_error_on_the_field(testapp, sms_sender):
    register_in_browser(testapp)
    form = status_page(testapp).forms["verify-phone-form"]
    form["code"] = wrong(code_from(sms_sender))
    page = form.submit(status=400)
    error = page.html.select_one("#code-error")
    assert "4 attempts left" in error.text
    code_input = page.html.select_one("#code")
    assert code_input["aria-invalid"] == "true"
    assert "code-error" in code_input["aria-describedby"].split()
    assert page.html.select_one("#form-error")["role"] == "alert"
    assert page.headers["Cache-Control"] == "no-store"


def test_malformed_code_does_not_spend_an_attempt(testapp, sms_sender):
    register_in_browser(testapp)
    for code in ("12345", "abcdef", "\uff11\uff12\uff13\uff14\uff15\uff16", "1" * 30, ""):
        form = status_page(testapp).forms["verify-phone-form"]
        form["code"] = code
        page = form.submit(status=400)
        assert "6-digit code" in page.html.select_one("#code-error").text
    form = status_page(testapp).forms["verify-phone-form"]
    form["code"] = code_from(sms_sender)
    assert form.submit().status_int == 303


def test_attempts_are_limited_then_even_the_right_code_fails(testapp, sms_sender):
    user = register(testapp)
    code = code_from(sms_sender)
    for left in (4, 3, 2, 1):
        body = verify_phone_api(testapp, user, wrong(code), status=400).json
        assert body["error"] == "wrong_code"
        assert f"{left} attempt" in body["fields"]["code"]
    last = verify_phone_api(testapp, user, wrong(code), status=400).json
    assert "last attempt" in last["message"]
    refused = verify_phone_api(testapp, user, code, status=410).json
    assert refused["error"] == "too_many_attempts"
    assert api_user(testapp, user)["phone_verified"] is False


def test_the_page_says_when_the_attempts_are_used_up(testapp, sms_sender):
    register_in_browser(testapp)
    code = code_from(sms_sender)
    for _ in range(5):
        form = status_page(testapp).forms["verify-phone-form"]
        form["code"] = wrong(code)
        form.submit(status=400)
    form = status_page(testapp).forms["verify-phone-form"]
    form["code"] = code
    assert "no longer works" in form.submit(status=410).html.select_one("#code-error").text


def test_expired_code_is_410(testapp, sms_sender, sessions):
    user = register(testapp)
    with sessions() as session:
        session.execute(
            update(User)
            .where(User.id == user["id"])
            .values(sms_code_expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    body = verify_phone_api(testapp, user, code_from(sms_sender), status=410).json
    assert body["error"] == "code_expired"
    assert body["fields"] == {"code": "This code has expired."}


def test_the_code_is_stored_hashed_and_cleared_once_used(testapp, sms_sender, sessions):
    user = register(testapp)
    code = code_from(sms_sender)
    with sessions() as session:
        stored = session.get(User, user["id"])
        assert stored.sms_code_hash and code not in stored.sms_code_hash
    verify_phone_api(testapp, user, code)
    with sessions() as session:
        stored = session.get(User, user["id"])
        assert stored.sms_code_hash is None and stored.phone_verified_at is not None


# -- the API ---------------------------------------------------------------------------------------


def test_api_confirms_the_phone_and_describes_the_user(testapp, sms_sender, email_sender):
    user = register(testapp)
    body = verify_phone_api(testapp, user, code_from(sms_sender)).json
    assert body["user"]["phone_verified"] is True
    assert body["user"]["verified"] is False
    testapp.get(link_from(email_sender)).forms["verify-email-form"].submit()
    assert api_user(testapp, user)["verified"] is True


def test_api_second_confirmation_is_409(testapp, sms_sender):
    user = register(testapp)
    verify_phone_api(testapp, user, code_from(sms_sender))
    body = verify_phone_api(testapp, user, code_from(sms_sender), status=409).json
    assert body["error"] == "already_verified"


@pytest.mark.parametrize("token", ["nobody", "0" * 32, "../../etc/passwd", "%00", "x" * 43])
def test_api_unknown_user_is_404(testapp, token):
    body = verify_phone_api(testapp, {"status_token": token}, "123456", status=404).json
    assert body["error"] == "not_found"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({}, "invalid_code"),
        ({"code": 123456}, "invalid_code"),
        ({"code": None}, "invalid_code"),
        ({"code": "12"}, "invalid_code"),
    ],
)
def test_api_bad_codes_are_400_with_the_field_named(testapp, payload, error):
    user = register(testapp)
    url = f"/api/status/{user['status_token']}/verify-phone"
    body = testapp.post_json(url, payload, status=400).json
    assert body["error"] == error
    assert "code" in body["fields"]


def test_api_verify_phone_needs_json(testapp):
    user = register(testapp)
    url = f"/api/status/{user['status_token']}/verify-phone"
    assert testapp.post(url, "code=123456", status=415).json["error"] == "unsupported_media_type"
    for body in ("{broken", "[1]", "null"):
        response = testapp.post(url, body, content_type="application/json", status=400)
        assert response.json["error"] == "invalid_json"


def test_api_verify_phone_body_limit_is_413(testapp):
    user = register(testapp)
    response = testapp.post_json(
        f"/api/status/{user['status_token']}/verify-phone", {"code": "1" * 20_000}, status=413
    )
    assert response.json["error"] == "request_entity_too_large"


def test_web_verify_phone_without_a_registration_in_this_browser_goes_to_register(testapp):
    page = testapp.get("/register")
    token = page.forms["register-form"]["csrf_token"].value
    response = testapp.post("/status/verify-phone", {"csrf_token": token, **CSRF_FREE_FORM})
    assert response.status_int == 303 and response.headers["Location"].endswith("/register")
